"""Data for the experiments: an embedded default, MNIST-family IDX files, binarisation.

See :func:`load` for where datasets are looked up, :func:`binarize` for the
three binarisations, and :func:`read_idx` / :func:`write_idx` for the format.
"""

from discograd.data.binarize import BINARIZATIONS, binarize
from discograd.data.datasets import (
    DATASET_NAMES,
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    ImageData,
    load,
)
from discograd.data.download import ChecksumError, DownloadError, default_data_dir, download
from discograd.data.idx import read_idx, write_idx

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "ChecksumError",
    "DatasetSpec",
    "DownloadError",
    "ImageData",
    "binarize",
    "default_data_dir",
    "download",
    "load",
    "read_idx",
    "write_idx",
]
