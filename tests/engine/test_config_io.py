"""config_io: TOML files and KEY=VALUE overrides onto TrainingConfig, and TOML back out."""

from __future__ import annotations

import math
import tomllib

import msgspec
import pytest

from esper_engine.config import GovernorConfig, HeuristicConfig, PPOConfig, TrainingConfig
from esper_engine.config_io import (
    ConfigError,
    apply_set,
    apply_table,
    describe,
    leaf_fields,
    load_toml,
    parse_text,
    set_value,
    to_toml,
)


def test_leaf_fields_expand_the_groups_in_declaration_order() -> None:
    leaves = leaf_fields()
    assert list(leaves)[:3] == ["task", "data_dir", "n_envs"]
    assert "governor.sensitivity" in leaves and "ppo.lr" in leaves
    assert "lifecycle.min_prune_age" in leaves and "heuristic.plateau_window" in leaves
    assert "governor" not in leaves and "sensitivity" not in leaves
    assert leaves["ppo.target_kl"] == float | None
    for path, tp in leaves.items():  # every field's type can be read from the command line
        assert not describe(tp).startswith("<"), path


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("n_envs", "7", 7),
        ("n_envs", " 7 ", 7),
        ("governor.sensitivity", "4", 4.0),
        ("governor.sensitivity", "2.5e-1", 0.25),
        ("ppo.lr", "1e-4", 1e-4),
        ("heuristic.grow_from_start", "false", False),
        ("heuristic.grow_from_start", "No", False),
        ("heuristic.grow_from_start", "on", True),
        ("heuristic.grow_from_start", "1", True),
        ("device", "cuda:1", "cuda:1"),
        ("data_dir", "/data/cifar", "/data/cifar"),
        ("data_dir", "none", None),
        ("host_lr", "None", None),
        ("host_lr", "0.01", 0.01),
        ("max_grad_norm", "none", None),
        ("ppo.target_kl", "0.02", 0.02),
        ("ppo.seed", "12", 12),
        ("ppo.seed", "none", None),
        ("slots", "block1,block2", ("block1", "block2")),
        ("slots", " block1 , block3 ", ("block1", "block3")),
        ("slots", '["block1", "block2"]', ("block1", "block2")),
        ("slots", "none", None),
        ("faults", "nan:1:2,crash:2:3", ("nan:1:2", "crash:2:3")),
        ("faults", "", ()),
        ("faults", "[]", ()),
        ("heuristic.cnn_preference", "norm", ("norm",)),
    ],
)
def test_values_are_read_by_the_fields_type(path, text, expected) -> None:
    value = parse_text(text, leaf_fields()[path], f"--set {path}")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("path", "text", "wanted"),
    [
        ("n_envs", "four", "expected an integer, got 'four'"),
        ("n_envs", "2.0", "expected an integer"),
        ("n_envs", "none", "expected an integer, got 'none'"),  # not optional
        ("governor.sensitivity", "high", "expected a number, got 'high'"),
        ("heuristic.grow_from_start", "maybe", "expected true or false"),
        ("host_lr", "fast", "expected a number or none, got 'fast'"),
        ("slots", "[1, 2]", "expected a list of strings"),
        ("slots", "[block1", "expected a list of strings"),
    ],
)
def test_bad_values_name_the_key_and_the_type(path, text, wanted) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, leaf_fields()[path], f"--set {path}")
    message = str(info.value)
    assert message.startswith(f"--set {path}: ") and wanted in message
    assert "\n" not in message


def test_set_reaches_nested_fields_and_later_values_win() -> None:
    config = TrainingConfig()
    for item in ("governor.sensitivity=4", "ppo.lr=1e-4", "n_envs=2", "n_envs=3"):
        config = apply_set(config, item)
    assert config.governor.sensitivity == 4.0 and config.ppo.lr == 1e-4 and config.n_envs == 3
    assert config.governor.multiplier == GovernorConfig().multiplier  # the rest untouched
    assert apply_set(config, "ppo.target_kl = 0.05").ppo.target_kl == 0.05  # spaces around =


@pytest.mark.parametrize(
    ("item", "wanted"),
    [
        ("governor.sensitivty=3", "unknown key 'governor.sensitivty' (did you mean "),
        ("sensitivity=3", "(did you mean 'governor.sensitivity'?)"),  # the old flat name
        ("min_prune_age=3", "(did you mean 'lifecycle.min_prune_age'?)"),
        ("nenvs=3", "(did you mean 'n_envs'?)"),
        ("ppo.plateau_windw=3", "(did you mean 'heuristic.plateau_window'?)"),
        ("zzz=1", "unknown key 'zzz'"),
        ("governor=3", "governor is a group of settings; set one of them, e.g. governor."),
        ("n_envs", "--set expects KEY=VALUE"),
        ("=3", "--set expects KEY=VALUE"),
    ],
)
def test_bad_keys_are_one_line_with_a_suggestion(item, wanted) -> None:
    with pytest.raises(ConfigError) as info:
        apply_set(TrainingConfig(), item)
    assert wanted in str(info.value) and "\n" not in str(info.value)


def test_tables_apply_nested_and_convert_toml_types() -> None:
    table = tomllib.loads(
        """
        n_envs = 2
        max_grad_norm = 2          # an integer where a number is wanted is fine
        slots = ["block1"]
        data_dir = "none"          # TOML has no null: "none" unsets an optional field
        [governor]
        sensitivity = 4.5
        [ppo]
        norm_adv = false
        target_kl = 0.03
        """
    )
    config = apply_table(TrainingConfig(data_dir="/x"), table, "config run.toml")
    assert config.n_envs == 2 and config.max_grad_norm == 2.0
    assert config.slots == ("block1",) and config.data_dir is None
    assert config.governor.sensitivity == 4.5
    assert config.ppo.norm_adv is False and config.ppo.target_kl == 0.03


@pytest.mark.parametrize(
    ("toml", "wanted"),
    [
        ("n_env = 2", "config c.toml: unknown key 'n_env' (did you mean 'n_envs'?)"),
        ("[governor]\nsensitivty = 2", "unknown key 'governor.sensitivty'"),
        ("[govenor]\nsensitivity = 2", "unknown key 'govenor.sensitivity' (did you mean"),
        ("governor = 3", "governor is a group of settings: write it as [governor]"),
        ("[n_envs]\nx = 1", "n_envs: expected an integer, got a table"),
        ("n_envs = 2.5", "n_envs: expected an integer, got 2.5"),
        ("n_envs = true", "n_envs: expected an integer, got True"),
        ("[heuristic]\ngrow_from_start = 1", "expected true or false, got 1"),
        ("slots = [1]", "slots: expected a list of strings"),
        ("device = 3", "device: expected a string, got 3"),
    ],
)
def test_bad_tables_are_one_line(toml, wanted) -> None:
    with pytest.raises(ConfigError) as info:
        apply_table(TrainingConfig(), tomllib.loads(toml), "config c.toml")
    assert wanted in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("n_envs = = 2\n")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00n_envs")
    cases = {
        tmp_path / "missing.toml": "cannot read config",
        tmp_path: "cannot read config",
        bad: "invalid TOML",
        binary: "not UTF-8 text",
    }
    for path, wanted in cases.items():
        with pytest.raises(ConfigError) as info:
            load_toml(path)
        assert wanted in str(info.value) and str(path) in str(info.value)
        assert "\n" not in str(info.value)


def _round_trip(config: TrainingConfig) -> TrainingConfig:
    return apply_table(TrainingConfig(), tomllib.loads(to_toml(config)), "printed")


def test_the_printed_toml_reads_back_to_the_same_config() -> None:
    assert _round_trip(TrainingConfig()) == TrainingConfig()
    odd = TrainingConfig(
        data_dir='C:\\data\\"cifar"\tß\x7f\x01 ✓',
        device="cuda:1",
        host_lr=1e-5,
        max_grad_norm=None,  # default 1.0: written as "none", not left out
        slots=("block1", "block3"),
        faults=("nan:1:2",),
        governor=GovernorConfig(absolute_threshold=1e300, sensitivity=0.1 + 0.2),
        heuristic=HeuristicConfig(cnn_preference=(), grow_from_start=False),
        ppo=PPOConfig(target_kl=0.015, seed=4_294_967_295, lr=3.0000000000000004e-4),
    )
    assert _round_trip(odd) == odd
    text = to_toml(odd)
    assert 'max_grad_norm = "none"' in text
    assert "[governor]" in text and "[ppo]" in text
    assert text.index("[governor]") > text.index("faults = ")  # top-level keys before tables


def test_the_printed_toml_comments_each_field_and_leaves_unset_ones_commented() -> None:
    text = to_toml(TrainingConfig())
    assert "# host_lr = none" in text and "\nhost_lr" not in text
    assert "# Divergence gate 2: loss > mean + sensitivity x std" in text
    lines = text.splitlines()
    sensitivity = lines.index("sensitivity = 6.0")
    assert lines[sensitivity - 1].startswith("# ")


def test_set_value_replaces_one_leaf() -> None:
    config = set_value(TrainingConfig(), "heuristic.max_live", 1)
    assert config.heuristic == HeuristicConfig(max_live=1)
    assert msgspec.structs.replace(config, heuristic=HeuristicConfig()) == TrainingConfig()
    assert math.isclose(set_value(config, "ppo.gamma", 0.9).ppo.gamma, 0.9)
