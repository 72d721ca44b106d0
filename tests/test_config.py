"""Configs from dataclasses: one declaration, flags, files, --set, precedence, round trips."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from discograd.errors import ConfigError
from discograd.experiments.bench import BenchConfig
from discograd.experiments.config import (
    RunConfig,
    build,
    config_fields,
    option,
    parse_sets,
    read_file,
    to_dict,
)
from discograd.experiments.sbn import SBNConfig
from discograd.experiments.ssl import SSLConfig
from discograd.experiments.toy import ToyConfig
from discograd.experiments.vae import VAEConfig
from discograd.experiments.variance import VarianceConfig

CONFIGS = [ToyConfig, VarianceConfig, VAEConfig, SBNConfig, SSLConfig, BenchConfig]


def test_precedence_defaults_file_flags_set():
    cfg = build(ToyConfig, {"steps": 10, "lr": 0.5}, {"steps": 20, "C": 7}, {"steps": "30"})
    assert (cfg.steps, cfg.lr, cfg.C, cfg.R) == (30, 0.5, 7, ToyConfig().R)


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"hidden": "128,64"}, (128, 64)),
        ({"hidden": "[128, 64]"}, (128, 64)),
        ({"hidden": ""}, ()),
        ({"hidden": [32]}, (32,)),
        ({"hidden": 32}, (32,)),
    ],
)
def test_tuples_from_strings_lists_and_scalars(given, expected):
    assert build(VAEConfig, given).hidden == expected


def test_other_types_from_strings():
    cfg = build(VAEConfig, parse_sets(["lr=1e-3", "data_dir=none", "kl=relaxed"]))
    assert (cfg.lr, cfg.data_dir, cfg.kl) == (1e-3, None, "relaxed")
    assert build(BenchConfig, parse_sets(["quick=yes"])).quick is True
    assert build(VAEConfig, {"batch-size": 7}).batch_size == 7  # either spelling in files


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"steps": "many"}, "steps must be an integer, got steps='many'"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"steps": True}, "steps must be an integer"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"stepz": 3}, "unknown setting 'stepz'; known: seeds, device"),
        ({"vae": {"stepz": 3}}, "unknown setting 'vae.stepz'"),
        ({"vae": 3}, "vae must be a table of settings"),
        ({"hidden": "[1, 2"}, "hidden must be a list of integers"),
    ],
)
def test_bad_values_name_the_setting(layer, message):
    cls = BenchConfig if "vae" in layer else VAEConfig
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        build(cls, layer)


@pytest.mark.parametrize(
    "given, seeds",
    [({"seeds": 3}, (0, 1, 2)), ({"seeds": "2"}, (0, 1)), ({"seeds": [3]}, (3,)), ({}, (0,))],
)
def test_seeds_a_count_or_a_list(given, seeds):
    assert build(ToyConfig, given).seeds == seeds


def test_seeds_must_be_distinct_and_present():
    with pytest.raises(ConfigError, match="must not repeat"):
        build(ToyConfig, {"seeds": [1, 1]}).validate()
    with pytest.raises(ConfigError, match="at least one seed"):
        build(ToyConfig, {"seeds": 0}).validate()


def test_the_flags_seeds_and_seed(tmp_path):
    import discograd.cli as cli

    def parsed(*argv: str) -> tuple[int, ...]:
        args = cli.build_parser().parse_args(["toy", *argv])
        args.command_line = ""
        return cli._config(args).seeds

    assert parsed("--seeds", "5") == (0, 1, 2, 3, 4)
    assert parsed("--seeds", "0", "2") == (0, 2)
    assert parsed("--seed", "7") == (7,)
    assert parsed() == (0,)


def test_bench_presets_sit_between_defaults_and_the_user():
    plain, quick = build(BenchConfig), build(BenchConfig, {"quick": True})
    assert plain.toy.steps == 3000 and quick.toy.steps == 500  # BENCH, then QUICK
    assert plain.vae.n_latent == 8 and VAEConfig().n_latent == 20
    assert build(BenchConfig, {"quick": True, "toy": {"steps": 9}}).toy.steps == 9
    # seeds and device are the bench's, for every study
    cfg = build(BenchConfig, {"seeds": 2, "device": "auto", "vae": {"seeds": [5]}})
    for sub in (cfg.toy, cfg.variance, cfg.vae):
        assert (sub.seeds, sub.device) == ((0, 1), "auto")


@pytest.mark.parametrize("cls", CONFIGS)
def test_config_json_is_accepted_back_as_it_is(cls, tmp_path):
    cfg = build(cls, {"seeds": [2, 5]})
    # what the command writes: the config and the command's name
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"command": "x", **to_dict(cfg)}, indent=2, sort_keys=True))
    data = read_file(path)
    data.pop("command")
    assert build(cls, data) == cfg


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_has_help_and_an_immutable_default(cls):
    for f in config_fields(cls):
        assert f.help.strip(), f.name
        assert not isinstance(f.default, (list, dict, set)), f.name


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass
    class Bad(RunConfig):
        x: int = option(3)

    with pytest.raises(TypeError, match=r"Bad\.x has no help text"):
        config_fields(Bad)
    with pytest.raises(TypeError, match="immutable"):
        option([1, 2], "a list")


def test_a_subclass_changes_a_default_and_inherits_the_help():
    [steps] = [f for f in config_fields(ToyConfig) if f.name == "steps"]
    [base] = [f for f in config_fields(VAEConfig) if f.name == "steps"]
    assert steps.default == 5000 and base.default == 2000 and steps.help == base.help


def test_files_json_toml_yaml(tmp_path, monkeypatch):
    (tmp_path / "c.json").write_text('{"steps": 3, "hidden": [4]}')
    (tmp_path / "c.toml").write_text("steps = 3\nhidden = [4]\n[vae]\nlr = 0.1\n")
    (tmp_path / "c.yaml").write_text("steps: 3\n")
    assert read_file(tmp_path / "c.json") == {"steps": 3, "hidden": [4]}
    assert read_file(tmp_path / "c.toml") == {"steps": 3, "hidden": [4], "vae": {"lr": 0.1}}
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML absent
    with pytest.raises(ConfigError, match="needs the PyYAML package"):
        read_file(tmp_path / "c.yaml")


def test_yaml_when_pyyaml_is_there(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "c.yml").write_text("steps: 3\nhidden: [4, 5]\n")
    assert build(VAEConfig, read_file(tmp_path / "c.yml")).hidden == (4, 5)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.json", "{bad", "is not valid JSON"),
        ("c.toml", "steps = = 3", "is not valid TOML"),
        ("c.json", "[1, 2]", "must hold a table of settings"),
        ("c.ini", "x", "unknown type .ini"),
    ],
)
def test_bad_files_are_one_line_config_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as exc:
        read_file(tmp_path / name)
    assert "\n" not in str(exc.value)


def test_parse_sets():
    assert parse_sets(["a=1", "vae.lr=2", "vae.hidden=3,4", "s=x=y"]) == {
        "a": "1",
        "vae": {"lr": "2", "hidden": "3,4"},
        "s": "x=y",
    }
    with pytest.raises(ConfigError, match="use key=value"):
        parse_sets(["steps"])


def test_a_config_file_of_another_command_is_refused(tmp_path, capsys):
    import discograd.cli as cli

    (tmp_path / "c.json").write_text('{"command": "toy", "steps": 3}')
    argv = ["vae", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "holds a toy config, not a vae one" in capsys.readouterr().err


def test_bench_data_flags_set_the_vae_study(tmp_path):
    import discograd.cli as cli

    folder = tmp_path / "idx"
    folder.mkdir()
    args = cli.build_parser().parse_args(["bench", "--dataset", str(folder), "--data-dir", "c"])
    cfg = cli._config(args)
    assert (cfg.vae.dataset, cfg.vae.data_dir) == (str(folder.resolve()), "c")  # stored absolute
