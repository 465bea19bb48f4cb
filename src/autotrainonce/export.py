"""Artifacts of a compact (physically pruned) model that load without autotrainonce.

:func:`save_compact` writes, into a run directory:

- ``compact.pt``: a pickled :class:`torch.fx.GraphModule` of the model. A GraphModule pickles as generated
  Python code plus plain ``torch.nn`` submodules, so ``torch.load(path, weights_only=False)`` rebuilds it in a
  process that has only torch, even when the model's own class lives in autotrainonce (a zoo model).
- ``compact.safetensors`` + ``compact.json``: the state dict, and a small description of the architecture
  (model class, zoo name and build arguments, and every module whose width differs from the dense model,
  with the constructor arguments needed to rebuild it). :func:`load_compact` turns the pair back into a zoo
  model; any other code can do the same in a few lines (docs/export.md).
- ``compact.onnx`` when the ``onnx`` package is importable: the dynamo exporter first, the TorchScript
  exporter second, with a dynamic batch dimension.

Security: ``compact.pt`` is a pickle. Unpickling it (``torch.load(..., weights_only=False)``) runs whatever
code the file names, so load it only from runs you trust (your own). :func:`load_compact` never unpickles: it
reads the JSON description and the safetensors weights and only builds registered layers and zoo models, so
it is the loader for files of unknown origin. A layer of the user's own is rebuilt only when its class is
registered with a rebuild description (:func:`autotrainonce.space.register_op`) in the loading process, or
passed in ``allowed_types``: the file names the class (``module:qualname``) but never makes the loader
import anything.

One module (about 500 lines) on purpose: the three artifacts share the atomic writer, and the description
that :func:`save_compact` writes and :func:`load_compact` reads is one format best read in one place.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, DiskFullError, is_disk_full
from .space.ops import MODULE_OPS

__all__ = [
    "PT_FILE",
    "SAFETENSORS_FILE",
    "JSON_FILE",
    "ONNX_FILE",
    "save_compact",
    "load_compact",
    "describe_architecture",
    "to_graph_module",
]

log = logging.getLogger(__name__)

PT_FILE = "compact.pt"
SAFETENSORS_FILE = "compact.safetensors"
JSON_FILE = "compact.json"
ONNX_FILE = "compact.onnx"
FORMAT_VERSION = 1

# Top-level modules a pickled GraphModule may reference and still load with torch alone.
_STANDALONE_ROOTS = {"torch", "builtins", "operator", "_operator", "math", "typing", "collections"}


# ------------------------------------------------------------------------------------------------------------
# writing files


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; a non-empty file written there replaces ``path`` at the end.

    On any error, or when nothing was written, the temp file is removed and ``path`` stays as it was, so a
    failed or interrupted export never leaves a torn artifact under the final name. A full disk becomes a
    :class:`DiskFullError` naming the file.
    """
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        if tmp.is_file() and tmp.stat().st_size > 0:
            os.replace(tmp, path)
    except BaseException as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(
                f"no space left on the device (or quota exceeded) while writing {path}; free some disk space "
                "or choose another --out-dir"
            ) from exc
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------------
# compact.pt: a GraphModule


def to_graph_module(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace(model)`` with the type annotations dropped, ready to pickle.

    Under ``from __future__ import annotations`` a ``forward(x: Tensor)`` annotation is the *string*
    ``"Tensor"``; fx keeps it as a global of the generated code, which then cannot be pickled. The
    annotations carry no behaviour, so every node's type is cleared.
    """
    gm = torch.fx.symbolic_trace(model)
    for node in gm.graph.nodes:
        node.type = None
    gm.recompile()
    return gm


def _foreign_modules(gm: torch.fx.GraphModule) -> set[str]:
    """Python modules outside torch and the standard helpers that unpickling ``gm`` would import."""
    names = {type(m).__module__ for m in gm.modules() if not isinstance(m, torch.fx.GraphModule)}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            names.add(getattr(node.target, "__module__", None) or "builtins")
    return {n for n in names if n.split(".")[0] not in _STANDALONE_ROOTS}


def _save_pt(model: nn.Module, path: Path, name: str = PT_FILE) -> None:
    try:
        gm = to_graph_module(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow; the plain pickle still works
        warnings.warn(
            f"torch.fx could not trace the compact model ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"{name} pickles the model object, so loading it needs the package defining "
            f"{type(model).__module__}.{type(model).__qualname__}",
            stacklevel=3,
        )
        torch.save(model, path)
        return
    foreign = _foreign_modules(gm)
    if foreign:
        warnings.warn(
            f"{name} references {', '.join(sorted(foreign))}; loading it needs those modules importable",
            stacklevel=3,
        )
    gm.eval()
    torch.save(gm, path)


# ------------------------------------------------------------------------------------------------------------
# compact.safetensors + compact.json


def _jsonable(value: Any, what: str) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, what) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"{what} is a {type(value).__name__}, which compact.json cannot hold; rebuild= of register_op must name "
        "constructor arguments stored as plain values (numbers, strings, bools, tuples, a tensor-or-None)"
    )


def type_name(cls: type) -> str:
    """How ``compact.json`` names a module class: ``"Conv2d"`` for torch.nn layers, else ``"module:qualname"``."""
    if getattr(nn, cls.__name__, None) is cls:
        return cls.__name__
    return f"{cls.__module__}:{cls.__qualname__}"


def _module_spec(module: nn.Module) -> dict[str, Any] | None:
    """``{"type": "Conv2d", "args": {...}}`` for a module whose class has a rebuild description, else None."""
    spec = MODULE_OPS.get(type(module))  # the exact class: a subclass may take other constructor arguments
    if spec is None or spec.rebuild is None:
        return None
    slots = {**module._parameters, **module._buffers}
    args: dict[str, Any] = {}
    for name in spec.rebuild:
        value = getattr(module, name)
        if isinstance(value, torch.Tensor) or (value is None and name in slots):
            args[name] = value is not None  # a tensor argument (bias) is recorded as present or not
        else:
            args[name] = _jsonable(value, f"{type(module).__name__}.{name}")
    return {"type": type_name(type(module)), "args": args}


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    """Shapes of a module's own parameters and buffers (not its children's)."""
    out = {n: list(p.shape) for n, p in module.named_parameters(recurse=False)}
    out.update({n: list(b.shape) for n, b in module.named_buffers(recurse=False) if b is not None})
    return out


def describe_architecture(
    compact: nn.Module, reference: nn.Module | None = None
) -> dict[str, dict[str, Any]]:
    """Per module path, the spec of every module of ``compact`` whose width differs from ``reference``.

    Without a reference every rebuildable module is listed (rebuilding an unchanged module is harmless).
    Rebuildable means registered with a rebuild description (``register_op(cls, rebuild=...)``: torch.nn
    layers are; a layer of your own can be). A module whose shapes changed but that has no rebuild
    description is listed with its type and shapes only, and :func:`load_compact` refuses it.
    """
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for path, module in compact.named_modules():
        if not path:
            continue
        spec = _module_spec(module)
        ref = ref_modules.get(path)
        unchanged = (
            ref is not None and type(ref) is type(module) and _shapes(ref) == _shapes(module)
            and (spec is None or spec == _module_spec(ref))
        )  # fmt: skip
        if unchanged:
            continue
        if spec is None:
            # Containers and stateless modules need no entry; without a reference a non-rebuildable module
            # cannot be known to have changed.
            if reference is None or not _shapes(module):
                continue
            spec = {"type": type_name(type(module)), "shapes": _shapes(module)}
        out[path] = spec
    return out


def _input_shapes(example_inputs: Any) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return list(example_inputs.shape)
    if isinstance(example_inputs, (tuple, list)):
        return [_input_shapes(x) for x in example_inputs]
    return None


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no storage (safetensors refuses shared or strided tensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _build_zoo(zoo: Mapping[str, Any]) -> nn.Module:
    from . import models

    return models.create(
        str(zoo["name"]), num_classes=zoo.get("num_classes"), in_channels=zoo.get("in_channels"),
        **dict(zoo.get("kwargs") or {}),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# compact.onnx


@contextlib.contextmanager
def _quiet_onnx() -> Iterator[None]:
    """Silence the exporters' chatter (optional-op registration warnings, deprecations) for one export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _count_tensors(out: Any) -> int:
    """Tensors in a (nested) model output, in the order the exporters flatten them."""
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return sum(_count_tensors(o) for o in out)
    return 0


def _save_onnx(model: nn.Module, args: tuple[Any, ...], path: Path, name: str = ONNX_FILE) -> str | None:
    """Export with a dynamic batch dimension; returns the exporter used, or None (warning) on failure."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if len(tensors) != len(args):
        log.warning("%s not written: ONNX export needs tensor inputs only", name)
        return None
    inputs = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    with torch.no_grad():
        n_out = _count_tensors(model(*args))
    outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    batch = torch.export.Dim("batch", min=1)
    errors = []
    with _quiet_onnx():
        try:
            torch.onnx.export(
                model, args, str(path), dynamo=True, input_names=inputs, output_names=outputs,
                dynamic_shapes=tuple({0: batch} for _ in args), external_data=False, verbose=False,
            )  # fmt: skip
            return "dynamo"
        except Exception as exc:  # the dynamo exporter rejects some graphs the TorchScript one handles
            errors.append(f"dynamo: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        try:
            torch.onnx.export(
                model, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                dynamic_axes={n: {0: "batch"} for n in (*inputs, *outputs)},
            )  # fmt: skip
            return "torchscript"
        except Exception as exc:
            errors.append(
                f"torchscript: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
    path.unlink(missing_ok=True)
    log.warning("%s not written, both ONNX exporters failed (%s)", name, "; ".join(errors))
    return None


def onnx_available() -> bool:
    """Whether the ``onnx`` package (needed by both exporters) can be imported."""
    return importlib.util.find_spec("onnx") is not None


# ------------------------------------------------------------------------------------------------------------
# public API


def save_compact(
    compact: nn.Module,
    example_inputs: Any,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    zoo: Mapping[str, Any] | None = None,
    reference: nn.Module | None = None,
) -> dict[str, Path]:
    """Write the compact model's files into ``out_dir``; returns ``{"pt", "safetensors", "json"[, "onnx"]}``.

    Args:
        compact: the pruned model (left untouched; a CPU copy in eval mode is saved).
        example_inputs: a tensor or tuple of tensors the model accepts (its shape goes into the JSON; it is
            also the ONNX tracing input, whose batch dimension is exported as dynamic).
        out_dir: the run directory.
        onnx: also write ``compact.onnx`` when the ``onnx`` package is importable.
        zoo: ``{"name", "num_classes", "in_channels", "kwargs"}`` when the model came from
            ``autotrainonce.models.create``; lets :func:`load_compact` rebuild it without further arguments.
        reference: the dense model, to list only the modules whose width changed (default: a fresh zoo model
            when ``zoo`` is given, else every rebuildable module is listed).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(compact).cpu().eval()
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    args = tuple(a.detach().cpu() if isinstance(a, torch.Tensor) else a for a in args)
    if reference is None and zoo is not None:
        try:
            reference = _build_zoo(zoo)
        except Exception as exc:  # a bad zoo entry must not cost the other artifacts
            warnings.warn(f"cannot build zoo model {zoo.get('name')!r} as reference: {exc}", stacklevel=2)
    paths: dict[str, Path] = {}

    # Each file is written under a temp name and renamed into place, so a failure (full disk, say) leaves
    # the earlier artifacts whole and no torn file under a final name.
    paths["pt"] = out / PT_FILE
    with _atomic_path(paths["pt"]) as tmp:
        _save_pt(model, tmp, name=PT_FILE)

    paths["safetensors"] = out / SAFETENSORS_FILE
    with _atomic_path(paths["safetensors"]) as tmp:
        save_file(_plain_state_dict(model), str(tmp), metadata={"format": "pt"})

    first = next(iter(model.parameters()), None)
    description = {
        "format": "autotrainonce-compact",
        "version": FORMAT_VERSION,
        "model_class": f"{type(compact).__module__}.{type(compact).__qualname__}",
        "zoo": None if zoo is None else {
            "name": zoo["name"], "num_classes": zoo.get("num_classes"), "in_channels": zoo.get("in_channels"),
            "kwargs": dict(zoo.get("kwargs") or {}),
        },
        "input_shape": _input_shapes(example_inputs),
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else "float32",
        "params": sum(p.numel() for p in model.parameters()),
        "weights": SAFETENSORS_FILE,
        "modules_listed": "changed" if reference is not None else "all",
        "modules": describe_architecture(model, reference),
    }  # fmt: skip
    paths["json"] = out / JSON_FILE
    with _atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(description, indent=1) + "\n")

    if onnx and onnx_available():
        target = out / ONNX_FILE
        with _atomic_path(target) as tmp:
            used = _save_onnx(model, args, tmp, name=ONNX_FILE)
        if used is not None:
            paths["onnx"] = target
        else:
            target.unlink(missing_ok=True)  # an ONNX file left by an earlier export would not match the rest
    return paths


def _rebuildable(name: str, allowed: tuple[type[nn.Module], ...]) -> type[nn.Module] | None:
    """The class that ``compact.json`` calls ``name``: one registered with a rebuild description in this
    process, or one the caller allowed. Nothing is imported: the file only picks among classes already here."""
    found = None
    for cls in (*[c for c, s in MODULE_OPS.items() if s.rebuild is not None], *allowed):
        if type_name(cls) == name:
            found = cls  # the latest registration wins (a class redefined in a notebook has a new object)
    return found


def _build_module(path: str, spec: Mapping[str, Any], allowed: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    name = str(spec.get("type"))
    if not isinstance(spec.get("args"), Mapping):
        raise CheckpointError(
            f"compact.json lists module {path!r} of type {name!r} without constructor arguments, so load_compact "
            "cannot rebuild it (register its class with autotrainonce.space.register_op(cls, ..., rebuild=...) "
            "before save_compact); load compact.pt instead"
        )
    cls = _rebuildable(name, allowed)
    if cls is None:
        raise CheckpointError(
            f"compact.json lists module {path!r} of type {name!r}, which load_compact cannot rebuild: no class "
            "of that name is registered in this process, and load_compact never imports code named by a file. "
            "Import the module that defines the class and registers it with "
            "autotrainonce.space.register_op(cls, ..., rebuild=...), or pass load_compact(..., allowed_types=[cls])"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
    try:
        return cls(**kwargs)
    except Exception as exc:  # a constructor refusing the file's arguments is the file's problem
        raise CheckpointError(
            f"compact.json: cannot build module {path!r} as {name}({', '.join(kwargs)}): {type(exc).__name__}: {exc}"
        ) from None


def load_compact(
    source: str | Path,
    *,
    model: nn.Module | None = None,
    allowed_types: Iterable[type[nn.Module]] = (),
) -> nn.Module:
    """Rebuild the compact model from ``compact.json`` + ``compact.safetensors`` (CPU, eval mode).

    Nothing is unpickled (safetensors + JSON only) and nothing is imported, so this is safe on files from
    elsewhere; ``compact.pt``, in contrast, is a pickle to load with ``torch.load(..., weights_only=False)``
    from trusted runs only.

    Args:
        source: the run directory, or the path of ``compact.json``.
        model: a freshly built dense model of the same architecture; needed when the JSON names no zoo model
            (a model of your own). Its listed modules are replaced in place.
        allowed_types: classes of your own that the JSON may name besides those registered with
            ``register_op(cls, rebuild=...)`` in this process; each is built as ``cls(**args)``.
    """
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_dir():
        path = path / JSON_FILE
    try:
        desc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; save_compact writes it into the run directory") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if desc.get("format") != "autotrainonce-compact" or desc.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a compact.json of format version {FORMAT_VERSION}")
    if model is None:
        if not desc.get("zoo"):
            raise ConfigError(
                f"{path} names no zoo model ({desc.get('model_class')}); pass model=<a fresh dense instance>"
            )
        model = _build_zoo(desc["zoo"])
    model = model.cpu()
    allowed = tuple(allowed_types)
    for mod_path, spec in desc["modules"].items():
        new = _build_module(mod_path, spec, allowed)
        try:
            model.set_submodule(mod_path, new, strict=True)
        except AttributeError as exc:
            raise CheckpointError(f"{path}: the model has no module {mod_path!r} ({exc})") from None
    dtype = getattr(torch, str(desc.get("dtype", "float32")), torch.float32)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        model = model.to(dtype)
    name = str(desc.get("weights", SAFETENSORS_FILE))
    if Path(name).name != name or name in ("", ".", ".."):
        # The JSON may come from elsewhere: it must not point the loader at files outside its own folder.
        raise CheckpointError(f"{path}: 'weights' must be a file name next to it, got {name!r}")
    weights = path.parent / name
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found next to {path.name}")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights} does not fit the rebuilt model: {' '.join(str(exc).split())}"
        ) from None
    return model.eval()
