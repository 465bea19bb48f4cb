"""The run config: defaults, YAML round trip, precise errors for unknown keys and wrong types, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autotrainonce.cli import DEMO_CONFIG
from autotrainonce.config import (
    Config,
    config_from_dict,
    load_config,
    merge_overrides,
    save_config,
    to_dict,
    to_yaml,
)
from autotrainonce.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults():
    cfg = Config()
    assert cfg.data.batch_size == 128 and cfg.data.holdout_fraction == 0.0
    assert cfg.optim.momentum == 0.9 and cfg.prune.method == "none" and cfg.run.out_dir == "runs"


def test_unknown_key_names_key_section_and_valid_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"optim": {"lrr": 0.1}})
    msg = str(info.value)
    assert "'lrr'" in msg and "'optim'" in msg and "did you mean 'lr'" in msg and "weight_decay" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown config section 'trainer'.*valid sections: model, data"):
        config_from_dict({"trainer": {}})


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("run", "epochs", "ten", "int"),
        ("run", "epochs", 1.5, "int"),
        ("optim", "nesterov", "yes", "bool"),
        ("optim", "lr", [0.1], "float"),
        ("optim", "name", "adam", "'sgd' | 'adamw'"),
        ("data", "batch_size", True, "int"),
        ("model", "kwargs", 3, "dict"),
    ],
)
def test_wrong_type_names_key_expected_and_got(section, key, value, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    msg = str(info.value)
    assert f"'{section}.{key}'" in msg and f"expects {expected}" in msg and f"got {value!r}" in msg


def test_value_ranges():
    with pytest.raises(ConfigError, match="optim.lr"):
        config_from_dict({"optim": {"lr": 0}})
    with pytest.raises(ConfigError, match="prune.remove_flops"):
        config_from_dict({"prune": {"remove_flops": 1.5}})
    with pytest.raises(ConfigError, match="run.device"):
        config_from_dict({"run": {"device": "tpu"}})


def test_lenient_spellings():
    cfg = config_from_dict(
        {"optim": {"weight_decay": "5e-4", "lr": 1}, "run": {"resume": "none", "channels_last": True}}
    )
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.run.resume is None and cfg.run.channels_last is True
    assert config_from_dict({"optim": {"name": "AdamW"}}).optim.name == "adamw"


def test_yaml_round_trip(tmp_path):
    cfg = config_from_dict(
        {"model": {"name": "resnet56", "kwargs": {"shortcut": "B"}}, "schedule": {"milestones": [100, 150]},
         "run": {"channels_last": False, "max_steps_per_epoch": 3}, "prune": {"options": {"a": [1, 2]}}}
    )  # fmt: skip
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
    assert to_dict(cfg)["schedule"]["milestones"] == [100.0, 150.0]


def test_merge_overrides_precedence():
    base = config_from_dict({"optim": {"lr": 0.05, "weight_decay": 1e-4}, "model": {"kwargs": {"a": 1}}})
    cfg = merge_overrides(
        base, {"optim.lr": 0.2, "run": {"epochs": 3, "seed": None}, "model": {"kwargs": {"b": 2}}}
    )
    assert cfg.optim.lr == 0.2 and cfg.optim.weight_decay == 1e-4  # untouched keys stay
    assert cfg.run.epochs == 3 and cfg.run.seed == 0  # None means "not given"
    assert cfg.model.kwargs == {"a": 1, "b": 2}
    assert base.optim.lr == 0.05  # the input is not modified
    with pytest.raises(ConfigError, match="unknown config key 'lrate'"):
        merge_overrides(base, {"optim.lrate": 1.0})


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("run:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'epoch' in section 'run'"):
        load_config(typo)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_demo_yaml_matches_builtin_fallback():
    assert load_config(CONFIGS / "demo.yaml") == config_from_dict(DEMO_CONFIG)
