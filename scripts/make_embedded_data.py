#!/usr/bin/env python3
"""Rebuild ``src/discograd/data/fashion_mnist_small.bin.gz`` from Fashion-MNIST's IDX files.

    apt-get install dataset-fashion-mnist          # Debian: /usr/share/datasets/fashion-mnist
    python scripts/make_embedded_data.py           # writes the file, prints sizes and digests
    python scripts/make_embedded_data.py --check   # rebuild in memory, compare, exit 1 if unequal

The recipe (docs/data.md explains the choices):

1. Read the four IDX files (``.gz`` or not) and check the SHA-256 of their
   decompressed content (so another copy of the release gives the same file).
2. Split as ``discograd.data.load("fashion-mnist")`` does: training images
   0..54,999 are ``train``, 55,000..59,999 ``valid``; t10k is ``test``.
3. From each split take, for each class 0..9, the first 300 (``train``), 50
   (``valid``) and 100 (``test``) images of that class in file order; keep
   the selected images in file order (so classes are interleaved as in the
   release). No random numbers are drawn, so nothing depends on a generator.
4. Quantise each pixel v in 0..255 to 16 grey levels, k = round(v / 17) =
   (v + 8) // 17 (never a tie: 17 is odd), the intensity being k / 15.
   k >= 8 exactly when v >= 128, so thresholding at 1/2 gives the same bits
   as thresholding the original images.
5. Pack with :func:`discograd.data.embedded.encode` (gzip level 9, mtime 0).

The decompressed payload is the same bit for bit on every machine; the
gzip bytes are too wherever zlib is the same (``--check`` tells which differs).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The file is read by this checkout's reader, so it must be written by this checkout's writer.
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from discograd.data.datasets import EMBEDDED_SHA256  # noqa: E402
from discograd.data.embedded import encode, quantize  # noqa: E402
from discograd.data.idx import read_idx  # noqa: E402

OUT = ROOT / "src" / "discograd" / "data" / "fashion_mnist_small.bin.gz"
SOURCE = Path("/usr/share/datasets/fashion-mnist")
# SHA-256 of the decompressed IDX files, as in Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1 (upstream zalandoresearch/fashion-mnist, data/fashion/).
SOURCE_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
VALIDATION = 5000  # discograd.data.load's default: the last 5,000 training images
PER_CLASS = {"train": 300, "valid": 50, "test": 100}


def _source_file(folder: Path, stem: str) -> Path:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            got = hashlib.sha256(raw).hexdigest()
            if got != SOURCE_SHA256[stem]:
                sys.exit(f"{p}: SHA-256 of its content is {got}, not the release's")
            return p
    sys.exit(f"{folder} has no {stem}(.gz): apt-get install dataset-fashion-mnist or --source")


def first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` images of each class, in file order."""
    picked = []
    for c in range(len(CLASSES)):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            sys.exit(f"class {c} has {len(idx)} images, fewer than {per_class}")
        picked.append(idx[:per_class])
    return torch.cat(picked).sort().values


def build(folder: Path) -> bytes:
    tr_x, tr_y, te_x, te_y = (read_idx(_source_file(folder, stem)) for stem in SOURCE_SHA256)
    cut = len(tr_x) - VALIDATION
    pools = {
        "train": (tr_x[:cut], tr_y[:cut]),
        "valid": (tr_x[cut:], tr_y[cut:]),
        "test": (te_x, te_y),
    }
    splits = {}
    for name, (x, y) in pools.items():
        idx = first_per_class(y, PER_CLASS[name])
        splits[name] = (quantize(x[idx]), y[idx])
    header = {
        "name": "fashion-mnist-small",
        "classes": CLASSES,
        "source": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), "
        "https://github.com/zalandoresearch/fashion-mnist",
        "license": "MIT; Copyright (c) 2017 Zalando SE; see LICENSE-fashion-mnist",
        "recipe": "scripts/make_embedded_data.py: first 300/50/100 images of each class "
        "of train[:55000] / train[55000:] / t10k, in file order; 16 grey levels "
        "k = (v + 8) // 17, intensity k / 15",
        "source_sha256": SOURCE_SHA256,
    }
    return encode(splits, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=OUT, help="file to write")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args()
    raw = build(args.source)
    payload = hashlib.sha256(gzip.decompress(raw)).hexdigest()
    print(
        f"{len(raw):,} bytes; payload SHA-256 {payload}; file SHA-256 "
        f"{hashlib.sha256(raw).hexdigest()}"
    )
    if payload != EMBEDDED_SHA256:
        print(f"note: discograd.data.datasets.EMBEDDED_SHA256 is {EMBEDDED_SHA256}; update it")
    if args.check:
        old = args.out.read_bytes()
        same_payload = hashlib.sha256(gzip.decompress(old)).hexdigest() == payload
        print(
            f"{args.out}: payload {'identical' if same_payload else 'DIFFERENT'}, "
            f"file bytes {'identical' if old == raw else 'different (zlib differs?)'}"
        )
        sys.exit(0 if same_payload else 1)
    args.out.write_bytes(raw)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
