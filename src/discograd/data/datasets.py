"""Image datasets for the experiments: an embedded default and the MNIST family.

* ``fashion-mnist-small`` (:data:`DEFAULT_DATASET`): 4,500 Fashion-MNIST images
  (28×28, 16 grey levels, with labels) shipped inside the package, split
  3,000 / 500 / 1,000 with every class equally often in each split. Needs no
  network and nothing optional; ``docs/data.md`` says how it was made.
* ``mnist``, ``fashion-mnist``, ``kmnist``: 28×28 IDX files, found in a local
  folder (``path=``), the cache (``data_dir=``, ``$DISCOGRAD_DATA``,
  ``~/.cache/discograd``), Debian's ``/usr/share/datasets/<name>/`` (the
  ``dataset-fashion-mnist`` package), or downloaded with checksums into the
  cache. Splits: the last ``validation`` training images are the validation
  set (55k/5k/10k for ``validation=5000``, as in Jang et al. and the ARSM code).
* ``digits``: scikit-learn's 1,797 8×8 digits (install the ``data`` extra),
  needing no network. A fixed permutation (seed 0) splits it 1,197/300/300.

Pixel intensities are floats in [0, 1]; binarise them with
:func:`discograd.data.binarize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from discograd.data.download import default_data_dir, download, make_dirs, md5sum, remove_dirs
from discograd.data.idx import read_idx

__all__ = ["DATASETS", "DATASET_NAMES", "DEFAULT_DATASET", "DatasetSpec", "ImageData", "load"]

_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how to check it.

    An MNIST-format dataset: ``md5`` maps each gzipped file name to the digest
    of the file as published, fetched from ``mirrors`` or found in
    ``system_dirs``. An embedded one: ``embedded`` names its file inside
    ``discograd.data`` (see :mod:`discograd.data.embedded`) and ``sha256`` is
    the digest of its decompressed payload; it has no mirrors.
    """

    name: str
    mirrors: tuple[str, ...]
    md5: dict[str, str] = field(hash=False)
    system_dirs: tuple[str, ...] = ()
    embedded: str = ""
    sha256: str = ""


#: The dataset the experiments use unless told otherwise: embedded, nothing to install.
DEFAULT_DATASET = "fashion-mnist-small"
#: SHA-256 of the decompressed payload of ``fashion_mnist_small.bin.gz``
#: (``scripts/make_embedded_data.py`` prints it when it rebuilds the file).
EMBEDDED_SHA256 = "496caabfe8cff1a024c4df1c368639354b82d4eebcf280a0d790a09a21aac0eb"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            DEFAULT_DATASET,
            (),
            {},
            embedded="fashion_mnist_small.bin.gz",
            sha256=EMBEDDED_SHA256,
        ),
        DatasetSpec(
            "mnist",
            (
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
            ("/usr/share/datasets/mnist",),
        ),
        DatasetSpec(
            "fashion-mnist",
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
            ("/usr/share/datasets/fashion-mnist",),
        ),
        DatasetSpec(
            "kmnist",
            ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            {
                "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
                "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
                "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
                "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
            },
        ),
    )
}
#: Every name :func:`load` accepts (``digits`` needs scikit-learn, the ``data`` extra).
DATASET_NAMES: tuple[str, ...] = (*DATASETS, "digits")


@dataclass
class ImageData:
    """A dataset split three ways. Images are ``[N, H*W]`` floats in [0, 1]."""

    name: str
    image_shape: tuple[int, int]
    train: Tensor
    train_labels: Tensor
    valid: Tensor
    valid_labels: Tensor
    test: Tensor
    test_labels: Tensor
    source: str

    @property
    def dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    def __repr__(self) -> str:
        return (
            f"ImageData({self.name!r}, {self.image_shape[0]}x{self.image_shape[1]}, "
            f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)}, "
            f"source={self.source!r})"
        )


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _folder_complete(folder: Path) -> bool:
    return all(_find(folder, stem) is not None for stem in _FILES)


def _read_folder(folder: Path, name: str, validation: int) -> ImageData:
    found = {stem: _find(folder, stem) for stem in _FILES}
    missing = [stem for stem, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)} (.gz or uncompressed); an MNIST-format "
            "folder needs train and t10k images and labels"
        )
    tr_x, tr_y, te_x, te_y = (read_idx(p) for p in found.values() if p is not None)
    if tr_x.dim() != 3 or te_x.dim() != 3 or tr_x.shape[1:] != te_x.shape[1:]:
        raise ValueError(f"{folder}: images must be [N, H, W] with equal H, W in train and test")
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
        raise ValueError(f"{folder}: image and label counts differ")
    if not 0 <= validation < len(tr_x):
        raise ValueError(
            f"validation={validation} must be in [0, {len(tr_x)}) for {len(tr_x)} training images"
        )
    h, w = tr_x.shape[1:]
    tr = tr_x.reshape(len(tr_x), -1).float() / 255
    te = te_x.reshape(len(te_x), -1).float() / 255
    cut = len(tr) - validation
    return ImageData(
        name=name,
        image_shape=(h, w),
        train=tr[:cut],
        train_labels=tr_y[:cut].long(),
        valid=tr[cut:],
        valid_labels=tr_y[cut:].long(),
        test=te,
        test_labels=te_y.long(),
        source=str(folder),
    )


def _load_digits() -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "the offline 'digits' dataset comes from scikit-learn: "
            "pip install 'discograd[data]' (or scikit-learn)"
        ) from err
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return ImageData(
        name="digits",
        image_shape=(8, 8),
        train=x[:1197],
        train_labels=y[:1197],
        valid=x[1197:1497],
        valid_labels=y[1197:1497],
        test=x[1497:],
        test_labels=y[1497:],
        source="scikit-learn load_digits",
    )


def _load_embedded(spec: DatasetSpec) -> ImageData:
    from discograd.data.embedded import decode, read_resource

    what = f"the embedded dataset {spec.name!r} (discograd/data/{spec.embedded})"
    try:
        raw = read_resource(spec.embedded)
    except OSError as err:
        raise FileNotFoundError(f"{what} is missing from this installation: {err}") from err
    got = decode(raw, sha256=spec.sha256 or None, what=what)
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = (got["data"][s] for s in ("train", "valid", "test"))
    h, w = got["image_shape"]
    return ImageData(
        name=spec.name,
        image_shape=(h, w),
        train=tr_x,
        train_labels=tr_y,
        valid=va_x,
        valid_labels=va_y,
        test=te_x,
        test_labels=te_y,
        source=f"embedded in discograd ({spec.embedded})",
    )


def load(
    name: str = DEFAULT_DATASET,
    *,
    path: str | Path | None = None,
    data_dir: str | Path | None = None,
    download_ok: bool = True,
    validation: int = 5000,
    spec: DatasetSpec | None = None,
    quiet: bool = False,
) -> ImageData:
    """Load a dataset by name, or an MNIST-format folder by path.

    Args:
        name: ``fashion-mnist-small`` (the embedded default, :data:`DEFAULT_DATASET`),
            ``digits`` (scikit-learn's), ``mnist``, ``fashion-mnist`` or ``kmnist``.
        path: a folder with the four IDX files (``.gz`` or not); overrides ``name``'s
            search. A missing folder is a ``FileNotFoundError``.
        data_dir: cache folder (default: ``$DISCOGRAD_DATA`` or ``~/.cache/discograd``);
            created only when a download into it succeeds.
        download_ok: fetch missing files (checksummed, atomic) into the cache; when
            any file fails, the files and folders this call created are removed again.
        validation: training images held out as the validation set (MNIST family;
            the embedded and ``digits`` splits are fixed).
        spec: override the registry entry (other mirrors, for tests or private copies).
        quiet: no download messages.
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist")
        return _read_folder(folder, folder.name, validation)
    if name == "digits" and spec is None:
        return _load_digits()
    spec = spec or DATASETS.get(name)
    if spec is None:
        known = ", ".join(DATASET_NAMES)
        raise ValueError(f"unknown dataset {name!r}; known: {known} (or pass a folder path)")
    if spec.embedded:
        return _load_embedded(spec)
    cache = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folder = cache / spec.name
    if _folder_complete(folder):
        _verify_cached(folder, spec)
        return _read_folder(folder, spec.name, validation)
    for system in spec.system_dirs:
        if _folder_complete(Path(system)):
            return _read_folder(Path(system), spec.name, validation)
    if not download_ok:
        raise FileNotFoundError(
            f"{spec.name} is not in {folder}"
            + (f" or {', '.join(spec.system_dirs)}" if spec.system_dirs else "")
            + "; allow downloading or pass a folder with the IDX files"
        )
    _download_all(spec, folder, quiet)
    return _read_folder(folder, spec.name, validation)


def _download_all(spec: DatasetSpec, folder: Path, quiet: bool) -> None:
    """Every file of ``spec`` into ``folder``, or nothing: a failure removes what this call made.

    All or nothing, so that a failed download never leaves a half-filled or
    empty cache folder behind (nor the folders above it that did not exist).
    """
    created = make_dirs(folder)
    fetched: list[Path] = []
    try:
        for file_name, digest in spec.md5.items():
            target = folder / file_name
            existed = target.exists()
            download(file_name, folder, spec.mirrors, digest, quiet=quiet)
            if not existed:
                fetched.append(target)
    except BaseException:  # also Ctrl-C: the cache is left as it was found
        for p in fetched:
            p.unlink(missing_ok=True)
        remove_dirs(created)
        raise


def _verify_cached(folder: Path, spec: DatasetSpec) -> None:
    for file_name, digest in spec.md5.items():
        p = folder / file_name
        if p.is_file() and md5sum(p) != digest:
            raise ValueError(
                f"cached {p} does not match its published MD5 {digest}; delete it to download again"
            )
