"""discograd.data: IDX files, the embedded default, the downloader, splits, binarisation.

The downloader is tested against a loopback server or a monkeypatched opener:
never the network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import math
import socket
import struct
import sys
import threading
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import pytest
import torch

from discograd import data as D
from discograd.data import embedded as E


def test_idx_roundtrip_gz_and_raw(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randint(0, 256, (5, 3, 4), generator=gen, dtype=torch.uint8),
        torch.randint(-1000, 1000, (7,), generator=gen, dtype=torch.int32),
        torch.randint(-100, 100, (2, 3), generator=gen, dtype=torch.int16),
        torch.randn(4, 2, generator=gen, dtype=torch.float32),
        torch.randn(3, generator=gen, dtype=torch.float64),
    ]
    for i, t in enumerate(tensors):
        for suffix in ("", ".gz"):
            p = tmp_path / f"t{i}.idx{suffix}"
            D.write_idx(p, t)
            back = D.read_idx(p)
            assert back.dtype == t.dtype and torch.equal(back, t)


def test_idx_is_big_endian_as_specified(tmp_path):
    p = tmp_path / "x.idx"
    D.write_idx(p, torch.tensor([1, 258], dtype=torch.int32))
    raw = p.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1])
    assert struct.unpack(">I", raw[4:8]) == (2,)
    assert raw[8:] == struct.pack(">ii", 1, 258)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(bad)
    trunc = tmp_path / "trunc.idx.gz"
    with gzip.open(trunc, "wb") as fh:
        fh.write(bytes([0, 0, 8, 2]) + struct.pack(">II", 3, 3) + bytes(5))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        D.read_idx(trunc)
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"definitely not gzip")
    with pytest.raises(ValueError, match="cannot read IDX"):
        D.read_idx(notgz)
    with pytest.raises(TypeError, match="dtype"):
        D.write_idx(tmp_path / "b.idx", torch.zeros(2, dtype=torch.bool))


def make_mnist_folder(folder: Path, n_train=60, n_test=20, size=6, gz=True, seed=0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(
            0, 256, (n_train, size, size), generator=gen, dtype=torch.uint8
        ),
        "train-labels-idx1-ubyte": torch.randint(
            0, 10, (n_train,), generator=gen, dtype=torch.uint8
        ),
        "t10k-images-idx3-ubyte": torch.randint(
            0, 256, (n_test, size, size), generator=gen, dtype=torch.uint8
        ),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (n_test,), generator=gen, dtype=torch.uint8),
    }
    for stem, t in arrays.items():
        D.write_idx(folder / (stem + (".gz" if gz else "")), t)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_local_folder_and_splits(tmp_path, gz):
    arrays = make_mnist_folder(tmp_path / "mine", gz=gz)
    d = D.load(path=tmp_path / "mine", validation=10)
    assert d.image_shape == (6, 6) and d.dim == 36
    assert len(d.train) == 50 and len(d.valid) == 10 and len(d.test) == 20
    flat = arrays["train-images-idx3-ubyte"].reshape(60, -1).float() / 255
    assert torch.equal(d.train, flat[:50]) and torch.equal(d.valid, flat[50:])
    assert torch.equal(d.valid_labels, arrays["train-labels-idx1-ubyte"][50:].long())
    assert 0 <= float(d.test.min()) and float(d.test.max()) <= 1
    with pytest.raises(ValueError, match="validation"):
        D.load(path=tmp_path / "mine", validation=60)


def test_load_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load(path=tmp_path / "nope")
    make_mnist_folder(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        D.load(path=tmp_path / "partial")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        D.load("cifar")
    with pytest.raises(FileNotFoundError, match="allow downloading"):
        D.load("kmnist", data_dir=tmp_path / "cache", download_ok=False)


# ----------------------------------------------------------- embedded data


def test_the_default_is_the_embedded_fashion_mnist_and_needs_nothing_optional(monkeypatch):
    # No scikit-learn and no network: both would fail the load if it touched them.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert D.DEFAULT_DATASET == "fashion-mnist-small" and D.DEFAULT_DATASET in D.DATASET_NAMES
    d = D.load()
    assert d.name == D.DEFAULT_DATASET and d.image_shape == (28, 28) and d.dim == 784
    sizes = {"train": 3000, "valid": 500, "test": 1000}
    for split, n in sizes.items():
        x, y = getattr(d, split), getattr(d, f"{split}_labels")
        assert x.shape == (n, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10  # stratified
        levels = x * 15
        assert torch.equal(levels, levels.round()) and 0 <= float(x.min()) < float(x.max()) <= 1
    assert not torch.equal(d.train[:10], d.test[:10])
    assert len(set(d.train_labels[:20].tolist())) > 3  # classes interleaved, not sorted
    assert torch.equal(D.load(D.DEFAULT_DATASET).valid, d.valid)  # the same every time


def test_the_embedded_file_is_small_licensed_and_intact():
    spec = D.DATASETS[D.DEFAULT_DATASET]
    here = resources.files("discograd.data")
    raw = here.joinpath(spec.embedded).read_bytes()
    assert len(raw) < 1_000_000
    assert hashlib.sha256(gzip.decompress(raw)).hexdigest() == spec.sha256
    notice = here.joinpath("LICENSE-fashion-mnist").read_text(encoding="utf-8")
    assert "Zalando SE" in notice and "MIT License" in notice
    header = E.decode(raw)
    assert header["name"] == D.DEFAULT_DATASET and len(header["classes"]) == 10
    assert header["splits"] == [["train", 3000], ["valid", 500], ["test", 1000]]


def test_quantize_keeps_the_threshold_bits_and_is_within_a_thirtieth():
    v = torch.arange(256, dtype=torch.uint8)
    k = E.quantize(v)
    assert k.dtype == torch.uint8 and int(k.min()) == 0 and int(k.max()) == 15
    assert bool((k[1:] >= k[:-1]).all())  # monotone
    x = v.float() / 255
    assert torch.equal(D.binarize(k.float() / 15, "threshold"), D.binarize(x, "threshold"))
    assert float((k.float() / 15 - x).abs().max()) <= 1 / 30 + 1e-7


def _tiny_splits(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (
            torch.randint(0, 16, (n, 6, 4), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=gen),
        )
        for name, n in (("train", 7), ("valid", 3), ("test", 0))
    }


def test_embedded_format_roundtrip():
    splits = _tiny_splits()
    raw = E.encode(splits, {"name": "tiny", "note": "ü"})
    assert raw == E.encode(splits, {"name": "tiny", "note": "ü"})  # bit for bit (mtime 0)
    payload_sha = hashlib.sha256(gzip.decompress(raw)).hexdigest()
    back = E.decode(raw, sha256=payload_sha)
    assert back["name"] == "tiny" and back["note"] == "ü" and back["image_shape"] == [6, 4]
    assert back["splits"] == [["train", 7], ["valid", 3], ["test", 0]]
    for name, (x, y) in splits.items():
        bx, by = back["data"][name]
        assert bx.shape == (len(x), 24) and by.dtype == torch.int64
        assert torch.equal(bx, x.reshape(len(x), 24).float() / 15)
        assert torch.equal(by, y)


def test_embedded_format_errors():
    splits = _tiny_splits()
    raw = E.encode(splits, {})
    with pytest.raises(ValueError, match="damaged"):
        E.decode(raw[: len(raw) // 2], what="tiny")
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        E.decode(raw, sha256="0" * 64)
    with pytest.raises(ValueError, match="not a discograd embedded dataset"):
        E.decode(gzip.compress(b"IDX? no"))
    payload = gzip.decompress(raw)
    with pytest.raises(ValueError, match="header promises"):
        E.decode(gzip.compress(payload[:-1]))
    with pytest.raises(ValueError, match="odd pixel count"):
        E.encode({"a": (torch.zeros(2, 3, 3, dtype=torch.uint8), torch.zeros(2))}, {})
    with pytest.raises(ValueError, match="grey levels"):
        E.encode({"a": (torch.full((2, 2, 2), 16, dtype=torch.uint8), torch.zeros(2))}, {})
    with pytest.raises(ValueError, match="one label"):
        E.encode({"a": (torch.zeros(2, 2, 2, dtype=torch.uint8), torch.zeros(3))}, {})


def test_a_damaged_embedded_file_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(E, "read_resource", lambda name: b"not gzip at all")
    with pytest.raises(ValueError, match=r"embedded dataset 'fashion-mnist-small'.*reinstall"):
        D.load(D.DEFAULT_DATASET)


def test_digits_still_available():
    pytest.importorskip("sklearn")
    d = D.load("digits")
    assert d.image_shape == (8, 8)
    assert (len(d.train), len(d.valid), len(d.test)) == (1197, 300, 300)
    assert float(d.train.min()) == 0.0 and float(d.train.max()) == 1.0
    assert torch.equal(D.load("digits").train, d.train)  # fixed split


# --------------------------------------------------------------- downloads


class _Server:
    """A loopback HTTP server over a folder, for the downloader tests."""

    def __init__(self, root: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(root), **k
        )
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    arrays = make_mnist_folder(root)
    server = _Server(root)
    yield server, root, arrays
    server.close()


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there now


def test_download_good_file(served, tmp_path):
    server, root, _ = served
    name = "t10k-labels-idx1-ubyte.gz"
    out = D.download(name, tmp_path / "cache", [server.url], _md5(root / name), quiet=True)
    assert out.read_bytes() == (root / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name]  # no .part left


def test_download_corrupted_file_leaves_nothing(served, tmp_path):
    server, _, _ = served
    name = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(D.ChecksumError, match=r"MD5 .* expected 0{32}.*nothing was written"):
        D.download(name, tmp_path / "cache", [server.url], "0" * 32, quiet=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]  # not even the cache folder


def test_download_server_down_is_a_clear_error(tmp_path):
    with pytest.raises(
        D.DownloadError, match=r"could not download x\.gz: .*download x\.gz by hand"
    ):
        D.download(
            "x.gz", tmp_path / "cache", [_closed_port_url()], "0" * 32, timeout=5, quiet=True
        )
    assert list(tmp_path.iterdir()) == []


def test_load_downloads_with_mirror_fallback_then_uses_the_cache(served, tmp_path):
    server, root, arrays = served
    spec = D.DatasetSpec(
        "toy-mnist",
        (_closed_port_url(), server.url),
        {f"{stem}.gz": _md5(root / f"{stem}.gz") for stem in arrays},
    )
    d = D.load("toy-mnist", spec=spec, data_dir=tmp_path / "cache", validation=10, quiet=True)
    assert len(d.train) == 50 and d.image_shape == (6, 6)
    server.close()  # now offline: the verified cache must suffice
    d2 = D.load("toy-mnist", spec=spec, data_dir=tmp_path / "cache", validation=10)
    assert torch.equal(d.test, d2.test)
    # A cached file that no longer matches its checksum is reported, not used.
    victim = tmp_path / "cache" / "toy-mnist" / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(gzip.compress(b"tampered"))
    with pytest.raises(ValueError, match="does not match its published MD5"):
        D.load("toy-mnist", spec=spec, data_dir=tmp_path / "cache")


def _no_network(url, *args, **kwargs):
    raise urllib.error.URLError("no network in the tests")


def test_a_failed_download_creates_no_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    deep = tmp_path / "no" / "such" / "cache"
    with pytest.raises(D.DownloadError, match="nothing was written"):
        D.download("x.gz", deep, ["http://mirror.invalid/"], "0" * 32, quiet=True)
    assert list(tmp_path.iterdir()) == []
    # The same through load(), as --data-dir /nonexistent/... does.
    with pytest.raises(D.DownloadError):
        D.load("kmnist", data_dir=deep, quiet=True)
    assert list(tmp_path.iterdir()) == []
    # A cache folder that existed before is kept, and stays as it was.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "mine.txt").write_text("keep")
    with pytest.raises(D.DownloadError):
        D.load("kmnist", data_dir=tmp_path / "cache", quiet=True)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mine.txt"]


def test_a_dataset_download_is_all_or_nothing(monkeypatch, tmp_path):
    """The first file arrives and checks out, the second fails: neither stays."""
    good = b"first file"
    spec = D.DatasetSpec(
        "two-files",
        ("http://mirror.invalid/",),
        {"a.gz": hashlib.md5(good).hexdigest(), "b.gz": "0" * 32},
    )
    calls = []

    def opener(url, *args, **kwargs):
        calls.append(url)
        if url.endswith("a.gz"):
            return io.BytesIO(good)
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(urllib.request, "urlopen", opener)
    with pytest.raises(D.DownloadError, match=r"could not download b\.gz"):
        D.load("two-files", spec=spec, data_dir=tmp_path / "cache", quiet=True)
    assert calls == ["http://mirror.invalid/a.gz", "http://mirror.invalid/b.gz"]
    assert list(tmp_path.iterdir()) == []


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISCOGRAD_DATA", str(tmp_path / "env-cache"))
    assert D.default_data_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("DISCOGRAD_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.default_data_dir() == tmp_path / "xdg" / "discograd"


# ------------------------------------------------------------ binarisation


def test_binarize_modes():
    x = torch.rand(200, 50, generator=torch.Generator().manual_seed(0))
    t = D.binarize(x, "threshold")
    assert torch.equal(t, (x > 0.5).float())
    f1, f2 = D.binarize(x, "fixed"), D.binarize(x, "fixed")
    assert torch.equal(f1, f2) and set(f1.unique().tolist()) <= {0.0, 1.0}
    gen = torch.Generator().manual_seed(1)
    d1, d2 = D.binarize(x, "dynamic", generator=gen), D.binarize(x, "dynamic", generator=gen)
    assert not torch.equal(d1, d2)
    # E[binarised] = x: z-test on the total over 10,000 pixels.
    total_var = float((x * (1 - x)).sum())
    assert abs(float((d1 - x).sum())) < 4.5 * math.sqrt(total_var)
    with pytest.raises(ValueError, match="binarization"):
        D.binarize(x, "otsu")  # type: ignore[arg-type]
