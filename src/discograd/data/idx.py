"""Reading and writing MNIST-format IDX files (gzipped or not).

The IDX format (LeCun et al., the MNIST distribution): two zero bytes, a type
code, the number of dimensions, then each dimension as a big-endian uint32,
then the values, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["read_idx", "write_idx"]

_TYPES: dict[int, torch.dtype] = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}
_CODES = {v: k for k, v in _TYPES.items()}


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (``.gz`` or raw) into a tensor of its stored dtype and shape.

    Raises ``ValueError`` naming the file when the header is not IDX or the
    payload is shorter or longer than the header says (a truncated download).
    """
    path = Path(path)
    try:
        with _open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:  # gzip raises these on corrupt streams
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = itemsize
    for d in shape:
        expected *= d
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: the header promises {expected} bytes of data for shape {shape}, "
            f"the file holds {len(raw) - header} (truncated or corrupted)"
        )
    data = (
        torch.frombuffer(bytearray(raw[header:]), dtype=dtype)
        if expected
        else torch.empty(0, dtype=dtype)
    )
    if itemsize > 1 and sys.byteorder == "little":
        data = data.view(torch.uint8).view(-1, itemsize).flip(-1).reshape(-1).view(dtype)
    return data.reshape(shape)


def write_idx(path: str | Path, tensor: Tensor) -> None:
    """Write ``tensor`` as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    path = Path(path)
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype not in _CODES:
        raise TypeError(f"IDX cannot store dtype {tensor.dtype}; use one of {list(_CODES)}")
    header = bytes([0, 0, _CODES[tensor.dtype], tensor.dim()]) + struct.pack(
        f">{tensor.dim()}I", *tensor.shape
    )
    itemsize = tensor.element_size()
    payload = tensor.reshape(-1)
    if itemsize > 1 and sys.byteorder == "little":
        payload = payload.view(torch.uint8).view(-1, itemsize).flip(-1).reshape(-1)
    with _open(path, "wb") as fh:
        fh.write(header)
        # clone(): the bytes of exactly this tensor, not of a larger shared storage
        fh.write(bytes(payload.view(torch.uint8).clone().untyped_storage()))
