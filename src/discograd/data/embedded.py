"""The file format of the small image datasets that ship inside the package.

One gzip stream (``mtime=0``, so the same payload always gives the same file
with the same zlib) holding:

* 8 bytes: the magic ``b"DGEMBED1"`` (the last byte is the format version);
* 4 bytes: the length ``L`` of the header, a big-endian uint32;
* ``L`` bytes: the header, UTF-8 JSON: ``name``, ``image_shape`` ``[H, W]``,
  ``levels`` (16: grey levels 0..15, intensity ``k / 15``), ``splits`` (a
  list of ``[split, count]`` in payload order), ``classes`` (label names), and
  free-form provenance (``source``, ``license``, ``recipe``, ...);
* for each split in order: its labels, one uint8 each, then its images, row
  major, two pixels per byte, the first pixel in the high nibble.

Only the standard library and torch read it (no numpy): :func:`decode` returns
tensors, :func:`encode` writes them (the recipe
``scripts/make_embedded_data.py`` and the tests use it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from importlib import resources
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAGIC", "decode", "encode", "quantize", "read_resource"]

MAGIC = b"DGEMBED1"
_LEVELS = 16  # 4 bits per pixel: two pixels per byte


def quantize(images: Tensor) -> Tensor:
    """8-bit grey values v in 0..255 to the 16 stored levels k = round(v / 17) = (v + 8) // 17.

    Never a tie (17 is odd). k / 15 > 1/2 exactly when v / 255 > 1/2 (k >= 8
    iff v >= 128), so thresholding the stored images gives the bits of the
    original ones; a Bernoulli(k / 15) draw is within 1/30 of Bernoulli(v / 255).
    """
    return ((images.to(torch.int32) + 8) // 17).to(torch.uint8)


def encode(splits: dict[str, tuple[Tensor, Tensor]], header: dict[str, Any]) -> bytes:
    """The gzip-compressed file holding ``splits``: name -> (levels, labels).

    ``levels`` are ``[N, H, W]`` uint8 grey levels in 0..15 and labels ``[N]``
    integers in 0..255; ``header`` adds provenance to the JSON
    header (its ``image_shape``, ``levels`` and ``splits`` are filled in here).
    """
    shapes = {tuple(x.shape[1:]) for x, _ in splits.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every split needs images [N, H, W] of one H, W; got {shapes}")
    h, w = next(iter(shapes))
    if (h * w) % 2:
        raise ValueError(f"{h}x{w} images have an odd pixel count; two pixels share a byte")
    parts = []
    for name, (x, y) in splits.items():
        if x.dtype != torch.uint8 or (x.numel() and int(x.max()) >= _LEVELS):
            raise ValueError(f"{name}: images must be uint8 grey levels in 0..{_LEVELS - 1}")
        if len(x) != len(y) or (y.numel() and (int(y.min()) < 0 or int(y.max()) > 255)):
            raise ValueError(f"{name}: need one label in 0..255 per image")
        flat = x.reshape(len(x), h * w)
        packed = (flat[:, 0::2] << 4) | flat[:, 1::2]
        parts += [_bytes(y.to(torch.uint8)), _bytes(packed)]
    meta = dict(header)
    meta.update(
        image_shape=[h, w],
        levels=_LEVELS,
        splits=[[name, len(x)] for name, (x, _) in splits.items()],
    )
    head = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
    payload = MAGIC + struct.pack(">I", len(head)) + head + b"".join(parts)
    return gzip.compress(payload, compresslevel=9, mtime=0)


def decode(raw: bytes, *, sha256: str | None = None, what: str = "embedded data") -> dict:
    """The header and the splits of a file made by :func:`encode`.

    Returns the header dict with ``"data"``: split -> (images ``[N, H*W]``
    float32 in [0, 1], i.e. level / 15; labels ``[N]`` int64). ``sha256``
    checks the decompressed payload. A damaged file is a ``ValueError``
    naming ``what``.
    """
    try:
        payload = gzip.decompress(raw)
    except (OSError, EOFError) as err:  # gzip's ways of saying "not a whole gzip stream"
        raise ValueError(f"{what} is damaged ({err}); reinstall discograd") from err
    if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
        raise ValueError(f"{what} does not match its SHA-256 {sha256}; reinstall discograd")
    if payload[:8] != MAGIC or len(payload) < 12:
        raise ValueError(f"{what} is not a discograd embedded dataset (magic {payload[:8]!r})")
    (n_head,) = struct.unpack(">I", payload[8:12])
    header = json.loads(payload[12 : 12 + n_head].decode())
    h, w = header["image_shape"]
    half = h * w // 2
    body = payload[12 + n_head :]
    need = sum(n * (1 + half) for _, n in header["splits"])
    if len(body) != need:
        raise ValueError(f"{what}: header promises {need} data bytes, file holds {len(body)}")
    # One copy into a writable buffer (torch.frombuffer warns on read-only bytes).
    data = (
        torch.frombuffer(bytearray(body), dtype=torch.uint8)
        if need
        else torch.empty(0, dtype=torch.uint8)
    )
    out, at = {}, 0
    for name, n in header["splits"]:
        labels = data[at : at + n].long()
        at += n
        packed = data[at : at + n * half].reshape(n, half)
        at += n * half
        levels = torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(n, h * w)
        out[name] = (levels.float() / (header["levels"] - 1), labels)
    header["data"] = out
    return header


def read_resource(file_name: str) -> bytes:
    """The bytes of ``file_name`` shipped beside this module (works from a wheel or a zip)."""
    return resources.files("discograd.data").joinpath(file_name).read_bytes()


def _bytes(t: Tensor) -> bytes:
    # clone(): exactly this tensor's bytes, not a larger storage it may view into
    return bytes(t.contiguous().clone().untyped_storage())
