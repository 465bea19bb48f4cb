"""The ``ato`` sub-commands: train (one process or a torchrun launch), demo, info, eval, and their helpers."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, config_from_dict, load_config, merge_overrides
from ..errors import CheckpointError, ConfigError

__all__ = ["DEMO_CONFIG", "demo_config", "parse_input_shape", "cmd_train", "cmd_demo", "cmd_info", "cmd_eval"]

log = logging.getLogger("autotrainonce")

#: Settings of ``ato demo``; configs/demo.yaml holds the same values with comments (a test keeps them equal).
#: The dict is the fallback when the package is installed without the repository's configs/ folder.
DEMO_CONFIG: dict[str, Any] = {
    "model": {"name": "resnet20"},
    "data": {
        "name": "fashion-mnist",
        "augment": False,
        "holdout_fraction": 0.0,
        "batch_size": 128,
        "eval_batch_size": 500,
        "workers": 0,
        "train_subset": 20000,
    },
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.2},
    "run": {"epochs": 2, "seed": 0, "out_dir": "runs", "name": "demo"},
    "prune": {
        "method": "ato",
        "remove_flops": 0.5,
        "options": {"controller_start": 0.05, "decide_at": 0.12, "freeze_at": 0.25},
    },
}
_REPO_DEMO_YAML = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


def demo_config() -> Config:
    """The demo's config: configs/demo.yaml when running from the repository, else :data:`DEMO_CONFIG`."""
    if _REPO_DEMO_YAML.is_file():
        return load_config(_REPO_DEMO_YAML)
    return config_from_dict(DEMO_CONFIG)


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3x32x32"`` (C x H x W; commas also accepted) -> (3, 32, 32); anything else is a ConfigError."""
    parts = re.split(r"[x,×]", text.strip().lower())
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"bad --input {text!r}: expected CxHxW with positive integers, e.g. 3x32x32")
    c, h, w = (int(p) for p in parts)
    return c, h, w


# ------------------------------------------------------------------------------------------------------------
# commands


def _parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --set {item!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=0.05")
        if "." not in key:
            raise ConfigError(f"bad --set {item!r}: the key needs its section, e.g. optim.{key.strip()}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)  # so "0.1", "true", "[1, 2]" get their types
        except yaml.YAMLError:
            raise ConfigError(f"bad --set {item!r}: the value is not valid YAML") from None
    return overrides


def _train_config(args: argparse.Namespace) -> Config:
    """Defaults < --config file < --set KEY=VALUE < dedicated flags."""
    cfg = load_config(args.config) if args.config else Config()
    cfg = merge_overrides(cfg, _parse_set(args.set))
    channels_last = {"auto": "auto", "true": True, "false": False}.get(args.channels_last or "")
    flags = {
        "model": {"name": args.model, "num_classes": args.num_classes},
        "data": {
            "name": args.data, "root": args.data_root, "batch_size": args.batch_size, "workers": args.workers,
            "train_subset": args.train_subset,
        },
        "optim": {"name": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay},
        "run": {
            "epochs": args.epochs, "seed": args.seed, "device": args.device, "out_dir": args.out_dir,
            "name": args.name, "resume": args.resume, "max_steps_per_epoch": args.max_steps_per_epoch,
            "tensorboard": args.tensorboard, "amp": args.amp, "channels_last": channels_last,
            "checkpoint_every_steps": getattr(args, "checkpoint_every_steps", None),
        },
        "prune": {"method": args.prune, "remove_flops": args.remove_flops, "remove_params": args.remove_params},
    }  # fmt: skip
    cfg = merge_overrides(cfg, flags)
    if getattr(args, "surgery", None):  # one ATO option, merged into the others rather than replacing them
        cfg = merge_overrides(cfg, {"prune.options.surgery": args.surgery})
    return cfg


#: Flags of `ato train` that only the launcher reads; they are not passed on to the processes it starts.
_LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")


def _strip_launch_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's flags and their values (``--nproc 2`` and ``--nproc=2`` forms)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item in _LAUNCH_FLAGS:
            skip = True
        elif not item.startswith(tuple(f"{flag}=" for flag in _LAUNCH_FLAGS)):
            out.append(item)
    return out


def _launch(args: argparse.Namespace) -> int:
    """Run this same `ato train` command in ``--nproc`` processes per node through torch.distributed.run."""
    import os
    import subprocess

    nproc, nnodes = args.nproc or 1, args.nnodes or 1
    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"--nproc and --nnodes must be at least 1, got {nproc} and {nnodes}")
    # A bad flag or config fails here, once, rather than in every process.
    from ..runner import per_rank_batch_size

    per_rank_batch_size(_train_config(args).data.batch_size, nproc * nnodes)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        cmd.append("--standalone")  # a private rendezvous on a free local port
    else:
        if not args.rdzv_endpoint:
            raise ConfigError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (reachable from every node)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}",
                "--rdzv-id=ato-train"]  # fmt: skip
        if args.node_rank is not None:
            cmd.append(f"--node-rank={args.node_rank}")
    cmd += ["-m", "autotrainonce.cli", *_strip_launch_flags(args.ato_argv)]
    log.info("launching %d process(es) per node on %d node(s): %s", nproc, nnodes, " ".join(cmd))
    status = subprocess.call(cmd, env=dict(os.environ))
    if status != 0:
        # torchrun ends with its own report; say in one line what happened and where to look.
        print(f"error: the distributed run failed (torchrun exit status {status}); the processes' own "
              "'error:' lines are above the launcher's report", file=sys.stderr)  # fmt: skip
    return status


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.distributed import launched_with_torchrun

    wants_processes = (args.nproc or 1) > 1 or (args.nnodes or 1) > 1
    if wants_processes and not launched_with_torchrun():
        return _launch(args)
    from ..runner import run_training

    # Under torchrun (or `ato train --nproc`), run_training joins the process group itself.
    run_training(_train_config(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the demo network twice with the same recipe, seed and data: once dense, once pruned by ATO while
    it trains; end with one table comparing the compact model with the dense one (accuracy, cost, time)."""
    from ..runner import format_comparison, run_training

    cfg = merge_overrides(
        demo_config(),
        {
            "run": {
                "device": args.device,
                "out_dir": args.out_dir,
                "max_steps_per_epoch": args.max_steps_per_epoch,
            }
        },
    )
    dense_cfg = merge_overrides(cfg, {"prune": {"method": "none"}, "run": {"name": f"{cfg.run.name}-dense"}})
    log.info("demo, run 1 of 2: %s trained without pruning (the reference)", cfg.model.name)
    dense = run_training(dense_cfg)
    log.info("demo, run 2 of 2: the same recipe while %s removes %.0f%% of the MACs", cfg.prune.method,
             100 * (cfg.prune.remove_flops or 0.0))  # fmt: skip
    pruned = run_training(cfg)
    log.info(
        "%s\n'dense, no pruning': run 1, the same network, data, recipe and seed trained without pruning.\n"
        "'compact': run 2, pruned while it trained and cut at the freeze; no fine-tuning.",
        format_comparison(pruned.results, reference=dense.results),
    )
    return 0


def _info_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """The model's constructor options from ``ato info --set model.kwargs.KEY=VALUE`` (checked like train's)."""
    overrides = _parse_set(items)
    other = sorted(k for k in overrides if k != "model.kwargs" and not k.startswith("model.kwargs."))
    if other:
        raise ConfigError(
            f"ato info --set takes model options only (model.kwargs.KEY=VALUE), got {', '.join(other)}"
        )
    return merge_overrides(Config(), overrides).model.kwargs


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .. import models
    from ..measure import count_macs, count_params, format_count

    c, h, w = parse_input_shape(args.input)
    model = models.build(args.model, num_classes=args.num_classes, in_channels=c, **_info_kwargs(args.set))
    example = torch.zeros(1, c, h, w)
    try:
        macs = count_macs(model, example)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # e.g. too small for its downsampling
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ConfigError(
            f"model {args.model!r} cannot run on a {args.input} input: {reason}; pass the image size it is "
            "built for with --input CxHxW (e.g. 3x224x224 for ImageNet models)"
        ) from None
    params = count_params(model)
    print(f"Model:       {args.model}")
    print(f"Input:       1x{c}x{h}x{w}")
    print(f"Classes:     {args.num_classes}")
    print(f"Parameters:  {format_count(params)} ({params:,})")
    print(f"MACs:        {format_count(macs)} ({macs:,})")
    if args.groups:
        from ..errors import AutoTrainOnceError
        from ..space import discover

        try:
            summary = discover(model, example).summary()
        except AutoTrainOnceError as exc:  # e.g. an untraceable model: the counts above still hold
            print(f"Channel groups: not available ({' '.join(str(exc).split())})")
        else:
            print()
            print("Channel groups (what pruning may remove; MACs % = share saved by removing the group):")
            print(summary)
    return 0


def _compact_architecture(model: Any, cfg: Config, state: dict[str, Any], example: Any) -> Any:
    """The compact model that a pruning run cut from ``model`` (its weights are left to the checkpoint).

    The pruner is rebuilt the way ``ato train`` built it and given the saved state, which holds the final
    mask; loading that state performs the same cut, in place.
    """
    from ..pruners import make_callback

    callback = make_callback(cfg.prune, model, example, None, int(state.get("total_steps") or 1))
    try:
        callback.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:  # a damaged state dict: say so instead of a traceback
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"the checkpoint's {cfg.prune.method} state cannot be read ({reason})") from None
    return callback.pruner.model


def cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from .. import data
    from ..runner import build_model, build_test_set, format_table, resolve_model_config
    from ..training import evaluate_model, load_checkpoint, load_model_state, resolve_device

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        # The weights-only unpickler names the first class it refused (the error is kept as the context).
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc.__context__ or ""))
        if refused:
            raise CheckpointError(
                f"{args.checkpoint} holds pickled Python objects ({refused.group(1)}), not an 'ato train' "
                "checkpoint (last.pt), so it was not loaded; a compact.pt is a whole pickled model: load it "
                "in Python with autotrainonce.export.load_compact(<run dir>), or with torch.load(path, "
                "weights_only=False) only if you trust the file"
            ) from None
        raise
    if not isinstance(ckpt.get("config"), dict) or not ckpt["config"]:
        raise CheckpointError(
            f"checkpoint {args.checkpoint} has no config; it was not written by 'ato train'"
        )
    # Where the run was written and how it resumed do not matter for evaluating it.
    saved = {**ckpt["config"], "run": {**(ckpt["config"].get("run") or {}), "name": None, "resume": None}}
    try:
        cfg = config_from_dict(saved)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {args.checkpoint} holds an invalid config: {exc}") from None
    cfg = merge_overrides(
        cfg, {"data": {"name": args.data, "root": args.data_root}, "run": {"device": args.device}}
    )
    device = resolve_device(cfg.run.device)
    # the same builders as `ato train`: test split with the eval transform, the model (zoo or module:attr)
    cfg = resolve_model_config(cfg, data.info(cfg.data.name, root=cfg.data.root, **cfg.data.options))
    test = build_test_set(cfg)
    model = build_model(cfg)
    ato_state = (ckpt.get("callbacks") or {}).get(cfg.prune.method)
    if isinstance(ato_state, dict) and ato_state.get("cut"):
        # Saved after an ATO cut (surgery=freeze): the weights are the compact model's.
        model = _compact_architecture(model, cfg, ato_state, test[0][0].unsqueeze(0))
    load_model_state(model, ckpt["model"], f"checkpoint {args.checkpoint}")
    loader = DataLoader(test, batch_size=args.batch_size or cfg.data.eval_batch_size, num_workers=0)
    metrics = evaluate_model(model.to(device), loader, device)
    rows = [
        ("checkpoint", f"{args.checkpoint} (epoch {ckpt.get('epoch')})"),
        ("model", cfg.model.name),
        ("data", f"{cfg.data.name} test, {len(test)} images"),  # type: ignore[arg-type]
        ("test loss", f"{metrics['loss']:.4f}"),
        ("test top-1", f"{metrics['top1']:.2f}%"),
    ]
    if "top5" in metrics:
        rows.append(("test top-5", f"{metrics['top5']:.2f}%"))
    print(format_table("Evaluation", rows))
    return 0


# ------------------------------------------------------------------------------------------------------------
# parser
