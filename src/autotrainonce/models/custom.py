"""Models of your own, named ``"module:attr"`` (e.g. ``"mypkg.nets:MyNet"``) wherever a zoo name is accepted.

The module is imported from ``sys.path``, to which the current folder is added (at the end, so it never hides
an installed package), and ``attr`` is an ``nn.Module`` subclass or a function returning a model. It is called
with ``num_classes`` / ``in_channels`` when it takes parameters of those names (or ``**kwargs``) and with
``model.kwargs``. Every mistake is a :class:`~autotrainonce.errors.ConfigError` that says what to do.

A checkpoint's config names its model, and ``ato eval`` rebuilds it from that name, so a name must not be able
to call just any function: functions are called only from your own code (not from the standard library,
site-packages, torch or autotrainonce); classes must derive from ``nn.Module``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.nn as nn

from ..errors import ConfigError

__all__ = ["EXAMPLE", "is_custom_name", "short_name", "resolve_custom", "build_custom"]

#: The example every message shows.
EXAMPLE = "mypkg.nets:MyNet"

# Functions of these packages are never model factories a user means; they are refused like site-packages.
_NOT_FACTORIES = ("torch", "autotrainonce")


def is_custom_name(name: str) -> bool:
    """Whether ``name`` is a ``module:attr`` reference to a model of your own (zoo names have no colon)."""
    return ":" in name


def short_name(name: str) -> str:
    """A file-name-friendly form of a model name: the attribute of ``module:attr``, else ``name`` itself."""
    if not is_custom_name(name):
        return name
    return name.rpartition(":")[2].rpartition(".")[2].strip() or name


def _split(name: str) -> tuple[str, str]:
    module, _, attr = (part.strip() for part in name.partition(":"))
    if not (module and attr and all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))):
        raise ConfigError(
            f"model {name!r} is not of the form module:attr (dotted Python names, e.g. {EXAMPLE}, the class "
            "MyNet in mypkg/nets.py)"
        )
    return module, attr


def _add_cwd_to_path() -> None:
    """Make the current folder importable, as ``python -m`` does (the ``ato`` script alone does not)."""
    cwd = os.getcwd()
    if os.path.realpath(cwd) not in {os.path.realpath(p or os.curdir) for p in sys.path}:
        sys.path.append(cwd)  # last: a file in the current folder must not hide an installed package


def _import(module: str, name: str) -> ModuleType:
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names:
        # Refused before importing: some standard modules act when imported, and none holds a model.
        raise ConfigError(
            f"model {name!r}: {top!r} is a module of Python's standard library, which holds no models; name "
            f"your own nn.Module class or model function as module:attr, e.g. {EXAMPLE}"
        )
    _add_cwd_to_path()
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            file = module.replace(".", "/") + ".py"
            raise ConfigError(
                f"model {name!r}: cannot import module {module!r} (no module named {exc.name!r}); run ato in the "
                f"folder that contains {file} (now {os.getcwd()}) or add that folder to PYTHONPATH"
            ) from None
        raise ConfigError(  # found, but it imports something that is missing
            f"model {name!r}: importing module {module!r} failed: {exc}; install what it needs "
            "(--verbose shows the traceback)"
        ) from exc
    except Exception as exc:  # its own code failed: SyntaxError, NameError, ...
        raise ConfigError(
            f"model {name!r}: importing module {module!r} failed with {type(exc).__name__}: {exc}; fix the "
            "module (--verbose shows the traceback)"
        ) from exc


def _is_model_class(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


def _candidates(mod: ModuleType) -> list[str]:
    """Public nn.Module classes and functions defined in ``mod`` itself (not the ones it imported)."""
    return sorted(
        key for key, value in vars(mod).items()
        if not key.startswith("_") and (_is_model_class(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == mod.__name__
    )  # fmt: skip


def _installed(fn: Callable[..., Any]) -> str | None:
    """What ``fn`` belongs to when that is not the user's own code (an installed package, Python), else None."""
    module = getattr(fn, "__module__", None) or ""
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names:
        return "Python's standard library"
    if top in _NOT_FACTORIES:
        return f"the package {top!r}"
    file = getattr(sys.modules.get(module), "__file__", None)
    if not file:
        return None  # no file (e.g. __main__ in a notebook): code the user typed
    paths = sysconfig.get_paths()
    path = Path(file).resolve()
    for key in ("purelib", "platlib", "stdlib", "platstdlib"):
        if paths.get(key) and path.is_relative_to(Path(paths[key]).resolve()):
            return f"the installed package {top!r} ({file})"
    return None


def resolve_custom(name: str) -> Callable[..., nn.Module]:
    """The class or function that ``name`` (``module:attr``) refers to, checked; raises ConfigError."""
    module, attr = _split(name)
    mod = _import(module, name)
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = _candidates(mod)
            close = difflib.get_close_matches(attr, found, n=1)
            hint = f" (did you mean {module}:{close[0]}?)" if close else ""
            listed = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "none"
            raise ConfigError(
                f"model {name!r}: module {module!r} ({getattr(mod, '__file__', None) or 'no file'}) has no "
                f"attribute {attr!r}{hint}; its nn.Module classes and functions: {listed}"
            ) from None
    if inspect.isclass(obj):
        if not issubclass(obj, nn.Module):
            raise ConfigError(
                f"model {name!r} is the class {obj.__qualname__}, which does not derive from torch.nn.Module; "
                "name an nn.Module class or a function that returns one"
            )
        return obj
    # A classmethod (MyNet.from_config) is judged by its function.
    fn = obj.__func__ if inspect.ismethod(obj) and inspect.isclass(obj.__self__) else obj
    if not inspect.isfunction(fn):
        raise ConfigError(
            f"model {name!r} is a {type(obj).__name__}, not a class or a function; name an nn.Module class or "
            "a function that returns one"
        )
    where = _installed(fn)
    if where is not None:
        raise ConfigError(
            f"model {name!r} is a function of {where}, not of your own code; a checkpoint's config names its "
            "model, so ato calls only nn.Module classes and functions of your own modules: wrap it in a "
            "function of your own that returns the model"
        )
    return obj


def _call_text(factory: Callable[..., Any], kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{getattr(factory, '__qualname__', factory)}({args})"


def build_custom(
    name: str, num_classes: int | None = None, in_channels: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build the model ``name`` (``module:attr``) with ``kwargs``; options set to None keep their defaults.

    ``num_classes`` and ``in_channels`` are passed when the constructor has parameters of those names (or
    ``**kwargs``): a model hard-wired to its input needs neither.
    """
    factory = resolve_custom(name)
    try:
        params: dict[str, inspect.Parameter] | None = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # no signature to read: pass everything and let the call decide
        params = None
    open_ended = params is None or any(p.kind is p.VAR_KEYWORD for p in params.values())
    sizes = {"num_classes": num_classes, "in_channels": in_channels}
    call = {k: v for k, v in sizes.items() if v is not None and (open_ended or k in (params or {}))}
    call.update({k: v for k, v in kwargs.items() if v is not None})
    if params is not None and not open_ended:
        # Checked up front, so a typo reads as a config error instead of a TypeError from the constructor.
        unknown = sorted(k for k in call if k not in params)
        if unknown:
            own = ", ".join(k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            raise ConfigError(
                f"model {name!r} has no parameter {', '.join(unknown)}; its parameters are: {own or 'none'} "
                "(set them with --set model.kwargs.NAME=VALUE or model.kwargs in the config)"
            )
    try:
        model = factory(**call)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or "no message"
        raise ConfigError(
            f"model {name!r}: {_call_text(factory, call)} raised {type(exc).__name__}: {reason}; fix "
            "model.kwargs (--set model.kwargs.NAME=VALUE) or the model's code (--verbose shows the traceback)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {name!r}: {_call_text(factory, call)} returned a {type(model).__name__}, not a "
            "torch.nn.Module; name an nn.Module class or a function that returns one"
        )
    return model
