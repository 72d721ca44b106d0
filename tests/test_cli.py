"""The command line: smoke runs with tiny settings, reports, resume, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import discograd.cli as cli
from discograd.experiments import RunDir
from discograd.experiments.toy import ToyConfig
from discograd.experiments.vae import VAEConfig
from discograd.experiments.variance import VarianceConfig
from model_helpers import without_timing

TOY = [
    "toy", "--C", "5", "--R", "1", "--steps", "40", "--eval-every", "5", "--var-every", "20",
    "--var-draws", "5", "--checkpoint-every", "10", "--quiet",
]  # fmt: skip


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def assert_outputs(out: Path, pngs: int) -> None:
    for name in ("config.json", "metrics.jsonl", "results.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("*.png"))) >= pngs


def test_toy_smoke_and_the_optimum_is_reached(tmp_path, capsys):
    out = tmp_path / "toy"
    rc = run_cli(*TOY, "--steps", "150", "--out", str(out), "--estimators", "exact", "arsm")
    assert rc == 0
    assert_outputs(out, pngs=3)
    res = json.loads((out / "results.json").read_text())["toy"]
    for name in ("exact", "arsm"):  # an easy toy (C=5, R=1): both reach the best category
        assert res[name]["p_last"] > 0.9, res[name]
        assert res[name]["optimum"] - res[name]["expected_reward"] < 0.02
    report = (out / "report.md").read_text()
    assert "## The ARSM toy" in report and "![expected reward" in report
    assert "report:" in capsys.readouterr().out


def _strip_timing(records: list[dict]) -> list[dict]:
    return without_timing(records)


def test_toy_resumes_after_an_interruption(tmp_path, monkeypatch, capsys):
    args = [*TOY, "--estimators", "exact", "rloo:n_samples=3", "reinforce_ema"]
    straight = tmp_path / "straight"
    assert run_cli(*args, "--out", str(straight)) == 0

    # Kill the run at its 6th checkpoint: exact has finished, rloo is mid-way.
    interrupted = tmp_path / "interrupted"
    calls = {"n": 0}
    original = RunDir.save_checkpoint

    def flaky(self, phase, state, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, phase, state, *args)

    monkeypatch.setattr(RunDir, "save_checkpoint", flaky)
    assert run_cli(*args, "--out", str(interrupted)) == cli.EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err
    state = json.loads((interrupted / "state.json").read_text())
    assert list(state["done"]) == ["toy/exact/seed0"]
    exact_records = RunDir(interrupted, json.loads((interrupted / "config.json").read_text()))
    n_exact = len(exact_records.records("toy/exact/seed0"))
    monkeypatch.setattr(RunDir, "save_checkpoint", original)

    assert run_cli(*args, "--out", str(interrupted)) == 0
    assert "resuming the run in" in capsys.readouterr().out  # one line says so
    a = RunDir(straight, json.loads((straight / "config.json").read_text()))
    b = RunDir(interrupted, json.loads((interrupted / "config.json").read_text()))
    assert len(b.records("toy/exact/seed0")) == n_exact  # finished work was not redone
    for phase in ("toy/exact/seed0", "toy/rloo:n_samples=3/seed0", "toy/reinforce_ema/seed0"):
        assert _strip_timing(a.records(phase)) == _strip_timing(b.records(phase)), phase
    ra = json.loads((straight / "results.json").read_text())["toy"]
    rb = json.loads((interrupted / "results.json").read_text())["toy"]
    for k in ra:
        assert _strip_timing([ra[k]]) == _strip_timing([rb[k]])


def test_variance_smoke(tmp_path):
    out = tmp_path / "var"
    rc = run_cli(
        "variance", "--problems", "toy", "bernoulli", "--draws", "20", "--warmup", "2",
        "--temperatures", "0.5", "--estimators", "exact", "rloo:n_samples=2", "gumbel_softmax",
        "arm", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert rc == 0
    assert_outputs(out, pngs=2)
    res = json.loads((out / "results.json").read_text())["variance"]
    assert set(res["toy"]["estimators"]) == {"exact", "rloo:n_samples=2", "gumbel_softmax:tau=0.5"}
    assert res["toy"]["estimators"]["exact"]["seeds"] == [0]
    assert "arm" in res["bernoulli"]["estimators"]  # ARM applies to the Bernoulli problem only
    assert res["toy"]["estimators"]["exact"]["variance"] < 1e-20


VAE = [
    "vae", "--n-latent", "2", "--n-categories", "3", "--hidden", "16", "--steps", "12",
    "--batch-size", "50", "--eval-every", "6", "--log-every", "3", "--eval-samples", "4",
    "--iw-examples", "20", "--checkpoint-every", "6", "--quiet",
]  # fmt: skip


def test_vae_smoke(tmp_path):
    out = tmp_path / "vae"
    rc = run_cli(*VAE, "--out", str(out), "--estimators", "gumbel_softmax:tau=1.0", "arsm")
    assert rc == 0
    assert_outputs(out, pngs=3)
    res = json.loads((out / "results.json").read_text())["vae"]
    for v in res.values():
        assert v["test_neg_elbo"] > 0 and v["test_iw_bound"] > 0
    assert res["arsm"]["evals_per_step"] > 1


TINY_BENCH = """
[toy]
C = 4
R = 1
steps = 20
var_every = 10
var_draws = 4
eval_every = 5
estimators = ["exact", "rloo:n_samples=2", "gumbel_softmax:tau=0.5"]

[variance]
problems = ["toy", "bernoulli"]
draws = 10
warmup = 1
temperatures = [0.5, 1.0]
estimators = ["exact", "reinforce_ema", "rloo:n_samples=2", "gumbel_softmax",
              "straight_through", "disarm"]

[vae]
n_latent = 2
n_categories = 3
hidden = [16]
steps = 6
batch_size = 50
eval_every = 3
log_every = 3
eval_samples = 2
iw_examples = 10
estimators = ["gumbel_softmax:tau=1.0", "rloo:n_samples=2"]
"""


def test_bench_wiring_with_tiny_studies_from_a_toml_file(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_BENCH)
    out = tmp_path / "bench"
    assert run_cli("bench", "--config", str(cfg), "--out", str(out), "--quiet") == 0
    assert_outputs(out, pngs=6)
    report = (out / "report.md").read_text()
    for heading in ("Summary", "Concrete samples", "ARSM toy", "Bias and variance", "VAE"):
        assert heading in report
    assert "not distinguishable at 1 seed" in report  # one seed ranks nothing
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"toy", "variance", "vae"}
    written = json.loads((out / "config.json").read_text())
    assert written["toy"]["steps"] == 20 and written["vae"]["n_latent"] == 2
    assert written["vae"]["lr"] == 1e-3  # the bench's preset, under the file
    assert "bench took" in capsys.readouterr().out
    # The config.json a run writes is accepted back as it is: the same run, resumed.
    assert run_cli("bench", "--config", str(out / "config.json"), "--out", str(out)) == 0
    assert "resuming the run" in capsys.readouterr().out


def test_bench_skipping_everything_is_an_error(tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["bench", "--skip", "toy", "variance", "vae", "--out", str(out)]
    assert run_cli(*argv) == cli.EXIT_USAGE
    assert "skip leaves no study to run" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["toy", "--estimators", "nonsense"], "unknown estimator 'nonsense'"),
        (["toy", "--estimators", "gumbel_softmax:tau=-0.5"], "tau"),
        (["variance", "--temperatures", "-1"], "temperatures must be positive"),
        (["vae", "--dataset", "/no/such/folder"], "neither a known dataset"),
        (["vae", "--set", "steps=many"], "steps must be an integer, got steps='many'"),
        (["vae", "--set", "stepz=3"], "unknown setting 'stepz'"),
        (["toy", "--seeds", "2", "--seed", "1"], "--seed or --seeds"),
        (["toy", "--config", "/no/such.toml"], "cannot read config file"),
        (["toy", "--estimators", "arm"], "does not support categorical"),
        (["vae", "--latent", "bernoulli", "--estimators", "arsm"], "does not support bernoulli"),
        (["toy", "--steps", "0"], "steps must be a positive integer"),
        (["toy", "--threads", "0"], "--threads must be >= 1"),
        (
            ["toy", "--device", "cuda:7" if not __import__("torch").cuda.is_available() else "tpu"],
            "device",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert run_cli(*argv, "--out", str(tmp_path / "x"), "--quiet") == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err
    assert err.startswith(f"discograd {argv[0]}: error:")


@pytest.mark.parametrize("bug", [TypeError, ValueError, OSError, ImportError])
def test_a_bug_keeps_its_traceback_instead_of_passing_for_bad_input(bug, tmp_path, monkeypatch):
    import discograd.experiments.toy as toy

    def broken(*args, **kwargs):
        raise bug("a bug in discograd")

    monkeypatch.setattr(toy, "gradient_draws", broken)  # deep inside a run
    with pytest.raises(bug, match="a bug in discograd"):
        run_cli(*TOY, "--estimators", "arsm", "--out", str(tmp_path / "x"))


def test_debug_shows_the_traceback_of_bad_input_too(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert run_cli("toy", "--estimators", "nonsense", "--debug", "--out", out) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Traceback")
    assert "discograd.errors.ConfigError: unknown estimator 'nonsense'" in err[-2]
    assert err[-1].startswith("discograd toy: error: unknown estimator 'nonsense'")


def test_bad_settings_are_config_errors_and_still_value_errors():
    from discograd.errors import ConfigError
    from discograd.estimators.registry import make, parse_spec
    from discograd.experiments.common import resolve_device

    calls = [
        lambda: make("nonsense"),
        lambda: make("gumbel_softmax:tau=-1"),  # the constructor's ValueError
        lambda: make("rloo:bogus=1"),
        lambda: make("rloo:n_samples=two"),  # the constructor's TypeError
        lambda: parse_spec("rloo:4"),
        lambda: resolve_device("tpu"),
        lambda: ToyConfig(steps=0).validate(),
        lambda: ToyConfig(seeds=()).validate(),
        lambda: VAEConfig(activation="swish").validate(),
        lambda: VarianceConfig(problems=("nope",)).validate(),
    ]
    for call in calls:
        with pytest.raises(ConfigError) as exc:
            call()
        assert isinstance(exc.value, ValueError)  # library users catching ValueError


def test_a_dataset_folder_that_cannot_be_read_is_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = run_cli(*VAE, "--dataset", str(empty), "--out", str(tmp_path / "x"))
    assert rc == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("discograd vae: error: ") and "lacks" in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # the data is read before the run folder is made


def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = run_cli(*TOY, "--estimators", "exact", "--out", str(blocker / "run"))
    assert rc == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and "Traceback" not in err


def test_changed_config_in_the_same_out_is_refused_unless_fresh(tmp_path, capsys):
    out = str(tmp_path / "t")
    assert run_cli(*TOY, "--steps", "10", "--estimators", "exact", "--out", out) == 0
    assert run_cli(*TOY, "--steps", "20", "--estimators", "exact", "--out", out) == cli.EXIT_USAGE
    assert "different configuration" in capsys.readouterr().err
    (tmp_path / "t" / "notes.txt").write_text("mine")
    argv = [*TOY, "--steps", "20", "--estimators", "exact", "--out", out, "--fresh"]
    assert run_cli(*argv) == 0  # started over: everything in the folder is replaced
    assert json.loads((tmp_path / "t" / "config.json").read_text())["steps"] == 20
    assert not (tmp_path / "t" / "notes.txt").exists()


@pytest.mark.parametrize(
    "command", ["bench", "toy", "variance", "vae", "sbn", "ssl", "gates", "topk", "demo"]
)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(command, "--help")
    assert exc.value.code == 0
    assert "example:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command", ["bench", "toy", "variance", "vae", "sbn", "ssl", "gates", "topk"]
)
def test_every_flag_has_help_and_shows_its_default(command, capsys):
    import argparse

    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    p = sub.choices[command]
    settings = p.get_default("config_flags")
    assert {"seeds", "device"} <= set(settings)
    for action in p._actions:
        if action.dest in settings:
            assert action.help and "(default: " in action.help, action.option_strings
    with pytest.raises(SystemExit):
        run_cli(command, "--help")
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    if command in ("vae", "sbn", "ssl"):
        defaults = {"vae": ("200", "0.0003")}.get(command, ("100", "0.001"))
        for flag, default in zip(("--batch-size", "--lr"), defaults, strict=True):
            assert f"(default: {default})" in text.split(f" {flag} ")[1].split(" --")[0]


def test_version_and_no_abbreviations(capsys):
    from discograd import __version__

    with pytest.raises(SystemExit) as exc:
        run_cli("--version")
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        run_cli(*TOY, "--step", "3")  # not taken as --steps
    assert exc.value.code == 2 and "unrecognized arguments: --step" in capsys.readouterr().err


def test_python_dash_m_and_console_script():
    src = str(Path(cli.__file__).resolve().parents[1])  # this very discograd
    res = subprocess.run(
        [sys.executable, "-m", "discograd", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": src},
    )
    for command in ("bench", "toy", "variance", "vae", "sbn", "ssl", "gates", "topk", "demo"):
        assert command in res.stdout


def test_sbn_smoke(tmp_path):
    out = tmp_path / "sbn"
    rc = run_cli(
        "sbn", "--units", "4", "3", "--steps", "8", "--batch-size", "50", "--eval-every", "4",
        "--log-every", "4", "--valid-samples", "3", "--eval-samples", "5", "--iw-examples", "20",
        "--checkpoint-every", "4", "--estimators", "gumbel_softmax:tau=1.0", "disarm",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert rc == 0
    assert_outputs(out, pngs=2)
    res = json.loads((out / "results.json").read_text())["sbn"]
    assert set(res) == {"gumbel_softmax:tau=1.0", "disarm"}
    assert res["disarm"]["evals_per_step"] > res["gumbel_softmax:tau=1.0"]["evals_per_step"]
    assert "Structured output prediction" in (out / "report.md").read_text()


def test_ssl_smoke_with_a_timing_run(tmp_path):
    out = tmp_path / "ssl"
    rc = run_cli(
        "ssl", "--steps", "6", "--eval-every", "3", "--log-every", "3", "--checkpoint-every", "3",
        "--hidden", "16", "--z-dim", "2", "--timing-classes", "20", "--timing-steps", "3",
        "--methods", "marginal", "gumbel_softmax:tau=1.0", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["ssl"]) == {"marginal", "gumbel_softmax:tau=1.0"}
    assert json.loads((out / "config.json").read_text())["timing_classes"] == 20
    assert 0 <= results["ssl"]["marginal"]["test_accuracy"] <= 1
    assert results["timing"]["gumbel_softmax:tau=1.0"]["speedup_vs_marginal"] > 0
    report = (out / "report.md").read_text()
    assert "Semi-supervised" in report and "Time per step with 20 classes" in report
    assert (out / "timing-20" / "config.json").exists()  # the timing run's own folder


def test_runs_are_deterministic_also_with_learned_control_variates(tmp_path):
    # RELAX's lazily sized network draws its initial weights: seeded per phase.
    args = [*TOY, "--steps", "12", "--estimators", "relax", "rebar"]
    assert run_cli(*args, "--out", str(tmp_path / "a")) == 0
    assert run_cli(*args, "--out", str(tmp_path / "b")) == 0
    a = RunDir(tmp_path / "a", json.loads((tmp_path / "a" / "config.json").read_text()))
    b = RunDir(tmp_path / "b", json.loads((tmp_path / "b" / "config.json").read_text()))
    assert _strip_timing(a.records()) == _strip_timing(b.records())


def test_an_out_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text("my own results")
    for extra in ([], ["--fresh"]):
        argv = [*TOY, "--estimators", "exact", "--out", str(out), *extra]
        assert run_cli(*argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "is not empty (results.json) and holds no discograd run" in err
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert (out / "results.json").read_text() == "my own results"


def test_a_folder_holding_another_commands_run_says_so_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(*TOY, "--steps", "5", "--estimators", "exact", "--out", out) == 0
    capsys.readouterr()
    assert run_cli("variance", "--problems", "toy", "--out", out) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{out} holds a toy run;" in err and "--fresh" in err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_of_a_run_follows_the_umask(umask, mode, tmp_path):
    import os

    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert run_cli(*TOY, "--steps", "10", "--estimators", "exact", "--out", str(out)) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "state.json", "report.md", "toy_reward.png"}
    assert any(p.parent.name == "models" for p in files)
    for p in files:
        assert p.stat().st_mode & 0o777 == mode, p
    for d in [out, out / "models"]:
        assert d.stat().st_mode & 0o777 == mode | ((mode & 0o444) >> 2), d


def test_more_seeds_in_the_same_out_reuse_the_seeds_already_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = [*TOY, "--estimators", "exact", "arsm", "--out", out]
    assert run_cli(*args, "--seeds", "1") == 0
    before = RunDir(out, json.loads((tmp_path / "run" / "config.json").read_text()))
    seed0 = before.records("toy/arsm/seed0")
    assert run_cli(*args, "--seeds", "2") == 0
    after = RunDir(out, json.loads((tmp_path / "run" / "config.json").read_text()))
    assert after.records("toy/arsm/seed0") == seed0  # kept, not recomputed
    res = json.loads((tmp_path / "run" / "results.json").read_text())["toy"]["arsm"]
    assert res["seeds"] == [0, 1] and res["n"]["p_last"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seeds"] == [0, 1]


def test_log_sinks_and_meta_json_from_the_command_line(tmp_path):
    """--log csv,tensorboard: views equal to metrics.jsonl; meta.json records the session."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "toy"
    args = [*TOY, "--estimators", "rloo:n_samples=3", "--out", str(out)]
    assert run_cli(*args, "--log", "csv,tensorboard") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scalars = {
        (r["phase"], r["step"], k, float(v))
        for r in records
        for k, v in r.items()
        if k not in ("phase", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "phase,step,key,value"
    got = {(p, int(s), k, float(v)) for p, s, k, v in (row.split(",") for row in rows[1:])}
    assert got == scalars
    (folder,) = (out / "tb").iterdir()
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    rewards = [e.value for e in acc.Scalars("expected_reward")]
    want = [r["expected_reward"] for r in records if "expected_reward" in r]
    assert rewards == pytest.approx(want, rel=1e-6)  # TensorBoard stores float32
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device"] == "cpu" and meta["argv"][0] == "discograd"
    assert meta["ended"] is not None and meta["wall_seconds"] >= 0
    assert len(meta["sessions"]) == 1
    # A second invocation (everything finished) is a second session of the same run.
    assert run_cli(*args, "--log", "csv") == 0
    assert len(json.loads((out / "meta.json").read_text())["sessions"]) == 2


def test_an_unknown_log_sink_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "toy"
    assert run_cli(*TOY, "--out", str(out), "--log", "csv,paper") == 2
    assert "unknown log sink 'paper'" in capsys.readouterr().err
    assert not out.exists()
