"""Loading the run config: YAML, dotted overrides, typed key-by-key checks, range validation, ``to_dict``.

Loading rejects unknown keys and wrongly typed values with a :class:`~autotrainonce.errors.ConfigError` that
names the offending key, so a typo never silently falls back to a default. Precedence, lowest first: dataclass
defaults (:mod:`.schema`) < YAML file < ``merge_overrides`` (the CLI flags).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from .schema import Config, PruneConfig

__all__ = [
    "load_config",
    "config_from_dict",
    "merge_overrides",
    "validate",
    "to_dict",
    "to_yaml",
    "save_config",
]


# ----------------------------------------------------------------------------------------------------------------
# typed conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    return f"{value!r} ({'null' if value is None else type(value).__name__})"


class _Mismatch(Exception):
    """Internal: a value does not fit a type (turned into a ConfigError naming the key)."""


def _convert(value: Any, tp: Any) -> Any:
    """``value`` checked against (and lightly coerced to) the annotation ``tp``; raises _Mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if isinstance(value, str) and value.lower() in typing.get_args(tp):
            return value.lower()
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads "5e-4" (no dot) as a string; accept numeric strings for float fields.
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch from None
        else:
            raise _Mismatch
        # inf/nan pass every range check written as a comparison and only fail much later (an inf LR
        # surfaces as a surgery error, an inf warm-up as an OverflowError), so no float field takes them.
        if not math.isfinite(number):
            raise _Mismatch
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        key_tp, _ = typing.get_args(tp) or (Any, Any)
        # The dict fields become **kwargs of builders: a non-string key would be a TypeError deep inside.
        return {_convert(k, key_tp): v for k, v in value.items()}
    raise TypeError(f"config annotation {tp!r} is not supported")  # a bug in this module, not user input


def _section_from_dict(cls: type, data: Any, section: str) -> Any:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys and bad types."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{section}' must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(_unknown_key_message(str(key), section, valid))
        tp = hints[key]
        if key == "resume" and isinstance(value, str) and value.lower() == "none":
            value = None  # 'none' is the documented spelling of "start fresh"
        try:
            kwargs[key] = _convert(value, tp)
        except _Mismatch:
            extra = "; inf and nan are not allowed" if _non_finite(value) else ""
            raise ConfigError(
                f"config key '{section}.{key}' expects {_type_name(tp)}, got {_describe(value)}{extra}"
            ) from None
    return cls(**kwargs)


def _unknown_key_message(key: str, section: str, valid: list[str]) -> str:
    where = f"in section '{section}'" if section else "at the top level"
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    what = "key" if section else "section"
    return f"unknown config {what} '{key}' {where}{hint}; valid {what}s: {', '.join(valid)}"


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """A validated :class:`Config` from a plain nested dict (missing keys keep their defaults)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {_describe(data)}")
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _SECTIONS:
            raise ConfigError(_unknown_key_message(str(key), "", list(_SECTIONS)))
        sections[key] = _section_from_dict(hints[key], value, key)
    return validate(Config(**sections))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as a plain nested dict of primitives (safe for YAML, JSON and weights-only checkpoints)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML."""
    Path(path).write_text(to_yaml(cfg))


def load_config(path: str | Path) -> Config:
    """Read a YAML config file (``yaml.safe_load``); a missing file or bad YAML is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML{where}: {exc}".splitlines()[0]
        ) from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """Expand dotted keys (``{"optim.lr": 0.1}``) into nested dicts."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}' conflicts with another override of '{part}'")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return nested


def merge_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A new config with ``overrides`` applied on top of ``cfg``.

    ``overrides`` is nested (``{"optim": {"lr": 0.1}}``) or dotted (``{"optim.lr": 0.1}``). Values that are None
    are skipped, so unset CLI flags leave the config alone; ``model.kwargs`` and ``prune.options`` are merged key
    by key rather than replaced.
    """
    base = to_dict(cfg)
    for section, values in _nest(overrides).items():
        if section not in base:
            raise ConfigError(_unknown_key_message(section, "", list(base)))
        if not isinstance(values, dict):
            raise ConfigError(f"override of section '{section}' must be a mapping, got {_describe(values)}")
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(base[section].get(key), dict):
                base[section][key] = {**base[section][key], **value}
            else:
                base[section][key] = value
    return config_from_dict(base)


def validate(cfg: Config) -> Config:
    """Check value ranges that types cannot express, and the pruning options' types; returns ``cfg``."""
    _check_ranges(cfg)
    cfg.prune.options = _checked_prune_options(cfg.prune)
    return cfg


def _check_ranges(cfg: Config) -> None:
    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")

    d, o, s, r, p = cfg.data, cfg.optim, cfg.schedule, cfg.run, cfg.prune
    need(d.batch_size >= 1, "data.batch_size", "at least 1", d.batch_size)
    need(d.eval_batch_size >= 1, "data.eval_batch_size", "at least 1", d.eval_batch_size)
    need(d.workers >= 0, "data.workers", "0 or more", d.workers)
    need(0.0 <= d.holdout_fraction < 1.0, "data.holdout_fraction", "in [0, 1)", d.holdout_fraction)
    need(d.train_subset is None or d.train_subset >= 1, "data.train_subset", "at least 1", d.train_subset)
    need(d.image_size is None or d.image_size >= 1, "data.image_size", "at least 1", d.image_size)
    need(d.in_channels in (None, 1, 3), "data.in_channels", "1, 3 or null", d.in_channels)
    need(o.lr > 0, "optim.lr", "positive", o.lr)
    need(0.0 <= o.momentum < 1.0, "optim.momentum", "in [0, 1)", o.momentum)
    need(
        not (o.nesterov and o.name == "sgd" and o.momentum == 0),
        "optim.nesterov",
        "false when optim.momentum is 0",
        o.nesterov,
    )
    need(o.weight_decay >= 0, "optim.weight_decay", "0 or more", o.weight_decay)
    need(0.0 <= o.label_smoothing < 1.0, "optim.label_smoothing", "in [0, 1)", o.label_smoothing)
    need(o.mixup_alpha >= 0, "optim.mixup_alpha", "0 or more", o.mixup_alpha)
    need(s.warmup_epochs >= 0, "schedule.warmup_epochs", "0 or more", s.warmup_epochs)
    need(all(m > 0 for m in s.milestones or []), "schedule.milestones", "positive epochs", s.milestones)
    need(0.0 < s.gamma <= 1.0, "schedule.gamma", "in (0, 1]", s.gamma)
    need(r.epochs >= 1, "run.epochs", "at least 1", r.epochs)
    need(
        r.max_steps_per_epoch is None or r.max_steps_per_epoch >= 1,
        "run.max_steps_per_epoch",
        "at least 1",
        r.max_steps_per_epoch,
    )
    need(r.checkpoint_every_steps >= 0, "run.checkpoint_every_steps", "0 or more", r.checkpoint_every_steps)
    dev = r.device.lower()
    need(
        dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:"),
        "run.device",
        "auto, cpu, cuda or cuda:N",
        r.device,
    )
    need(r.name is None or _stays_inside(r.name), "run.name",
         "a folder name inside run.out_dir (relative, no '..')", r.name)  # fmt: skip
    for key in ("remove_flops", "remove_params"):
        value = getattr(p, key)
        need(value is None or 0.0 < value < 1.0, f"prune.{key}", "in (0, 1) or null", value)
    from ..pruners import available

    methods = ["none", *available()]
    need(p.method.lower() in methods, "prune.method", f"one of {', '.join(methods)}", p.method)


def _checked_prune_options(prune: PruneConfig) -> dict[str, Any]:
    """``prune.options`` with each value checked against (and coerced to) the pruning method's option types.

    The options are passed as keyword arguments to the algorithm; without this check a value of the wrong
    type (``temperature: abc``) fails as a TypeError deep inside it, after the data has been loaded.
    """
    if prune.method != "ato" or not prune.options:
        return prune.options
    try:
        from ..ato.config import AtoConfig
    except ImportError:  # a build without the ato package: run_training says so
        return prune.options
    from ..pruners.callback import SPACE_OPTIONS, option_bool

    hints = {**typing.get_type_hints(AtoConfig), **dict.fromkeys(SPACE_OPTIONS, bool)}
    out: dict[str, Any] = {}
    for key, value in prune.options.items():
        if key not in hints:
            raise ConfigError(_unknown_key_message(str(key), "prune.options", sorted(hints)))
        if key in SPACE_OPTIONS:  # bools that make_callback reads; also 0/1 and "false" as bench strings write them
            out[key] = option_bool(value, f"prune.options.{key}")
            continue
        try:
            out[key] = _convert(value, hints[key])
        except _Mismatch:
            extra = "; inf and nan are not allowed" if _non_finite(value) else ""
            expected = _type_name(hints[key])
            raise ConfigError(
                f"config key 'prune.options.{key}' expects {expected}, got {_describe(value)}{extra}"
            ) from None
    return out


def _stays_inside(name: str) -> bool:
    """Whether the relative path ``name`` stays inside the folder it is joined to (``a``, ``a/b``, no ``..``)."""
    parts = name.replace("\\", "/").split("/")
    absolute = name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")  # /x, \\server, C:
    return bool(name.strip()) and "\0" not in name and not absolute and ".." not in parts


def _non_finite(value: Any) -> bool:
    """Whether ``value`` is a number (or numeric string) that is inf or nan."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False
