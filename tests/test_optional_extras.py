"""The main job needs no optional extra: no matplotlib, no scikit-learn, no network.

Each check runs in a fresh interpreter where importing matplotlib or sklearn
fails (``sys.modules[name] = None``), as on a machine with a plain
``pip install discograd``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import discograd

SRC = str(Path(discograd.__file__).resolve().parents[1])

BLOCK = """
import sys
sys.modules["matplotlib"] = None  # ImportError on import, as when it is not installed
sys.modules["sklearn"] = None
import urllib.request
def _no_network(*a, **k):
    raise AssertionError("the main job must not use the network")
urllib.request.urlopen = _no_network
from discograd.cli import main
sys.exit(main(sys.argv[1:]))
"""

VAE = [
    "vae", "--dataset", "fashion-mnist-small", "--n-latent", "2", "--n-categories", "3",
    "--hidden", "16", "--steps", "4", "--batch-size", "20", "--eval-every", "4",
    "--log-every", "2", "--eval-samples", "2", "--iw-examples", "10",
    "--checkpoint-every", "4", "--estimators", "gumbel_softmax:tau=1.0", "--quiet",
]  # fmt: skip


def test_vae_on_the_embedded_data_without_matplotlib_or_sklearn(tmp_path):
    out = tmp_path / "vae"
    env = {**os.environ, "PYTHONPATH": SRC, "DISCOGRAD_DATA": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK, *VAE, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").stat().st_size > 0
    assert list(out.glob("*.png")) == []  # written without plots
    res = json.loads((out / "results.json").read_text())["vae"]
    assert res["gumbel_softmax:tau=1.0"]["test_neg_elbo"] > 0
    assert not (tmp_path / "cache").exists()  # the embedded data touches no cache
