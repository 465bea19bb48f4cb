"""The ``ato`` command line: train, eval, info and demo.

User errors (bad flags, unknown names, missing data, bad configs or checkpoints) print one ``error: ...`` line
on stderr and exit with status 2; ``--verbose`` adds the traceback. Run ``ato COMMAND --help`` for the flags.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .config import Config, config_from_dict, load_config, merge_overrides
from .errors import CheckpointError, ConfigError, UserError, is_disk_full

__all__ = ["main", "build_parser", "DEMO_CONFIG", "demo_config", "parse_input_shape", "user_message"]

log = logging.getLogger("autotrainonce")

#: Settings of ``ato demo``; configs/demo.yaml holds the same values with comments (a test keeps them equal).
#: The dict is the fallback when the package is installed without the repository's configs/ folder.
DEMO_CONFIG: dict[str, Any] = {
    "model": {"name": "resnet20"},
    "data": {
        "name": "fashion-mnist",
        "augment": False,
        "holdout_fraction": 0.05,
        "batch_size": 128,
        "eval_batch_size": 500,
        "workers": 0,
    },
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.2},
    "run": {"epochs": 7, "seed": 0, "out_dir": "runs", "name": "demo"},
    "prune": {
        "method": "ato",
        "remove_flops": 0.5,
        "options": {
            "controller_start": 0.10,
            "proximal_start": 0.20,
            "lambda_switch": 0.49,
            "freeze_at": 0.51,
            "hyper_step": 10,
            "mask_interval": 0.05,
            "surgery": "end",
        },
    },
}
_REPO_DEMO_YAML = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one ``error:`` line like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # Keep the command line as given: `ato train --nproc N` hands the same arguments to torchrun. The
        # top-level parser returns last, so its (complete) list wins over the sub-command's.
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.ato_argv = list(sys.argv[1:] if args is None else args)
        return parsed, extras


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
    from .training.run import per_rank_batch_size

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
    from .training.distributed import launched_with_torchrun

    wants_processes = (args.nproc or 1) > 1 or (args.nnodes or 1) > 1
    if wants_processes and not launched_with_torchrun():
        return _launch(args)
    from .training.run import run_training

    # Under torchrun (or `ato train --nproc`), run_training joins the process group itself.
    run_training(_train_config(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .training.run import run_training

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
    # run_training ends with the before/after table (accuracy, MACs, parameters, CPU latency, equivalence).
    run_training(cfg)
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

    from . import models
    from .measure import count_macs, count_params, format_count

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
        from .errors import AutoTrainOnceError
        from .space import discover

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
    from .pruners import make_callback

    callback = make_callback(cfg.prune, model, example, None, int(state.get("total_steps") or 1))
    try:
        callback.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:  # a damaged state dict: say so instead of a traceback
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"the checkpoint's {cfg.prune.method} state cannot be read ({reason})") from None
    return callback.pruner.model


def cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from . import data, models
    from .training import evaluate_model, load_checkpoint, load_model_state, resolve_device
    from .training.run import format_table

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
    info = data.info(cfg.data.name, root=cfg.data.root, **cfg.data.options)
    ch = cfg.model.in_channels if cfg.model.in_channels not in (None, info.in_channels) else None
    transform = data.build_transform(info, False, image_size=cfg.data.image_size, in_channels=ch)
    test = data.create(cfg.data.name, "test", root=cfg.data.root, transform=transform, **cfg.data.options)
    model = models.build(  # a module:attr model is imported and built again, as `ato train` did
        cfg.model.name, num_classes=cfg.model.num_classes or info.num_classes,
        in_channels=cfg.model.in_channels or info.in_channels, **cfg.model.kwargs,
    )  # fmt: skip
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


def build_parser() -> argparse.ArgumentParser:
    """The ``ato`` argument parser."""
    # Sub-commands also accept --verbose; SUPPRESS keeps their default from hiding a top-level --verbose.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")  # fmt: skip
    parser = _Parser(prog="ato", description="Train a network from scratch and prune it in the same run.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", parents=[common], help="train (and optionally prune) a model")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set optim.label_smoothing=0.1 (repeatable)",
    )
    g = train.add_argument_group("model and data")
    g.add_argument(
        "--model",
        help="zoo name (e.g. resnet20, resnet56, mobilenetv2_cifar) or module:attr of your own nn.Module class "
        "or model function, e.g. mypkg.nets:MyNet (its options: --set model.kwargs.NAME=VALUE)",
    )
    g.add_argument("--num-classes", type=int, help="classifier outputs (default: from the dataset)")
    g.add_argument("--data", help="dataset: fashion-mnist, digits, cifar10, cifar100, imagefolder, synthetic")
    g.add_argument("--data-root", help="dataset folder (default: the dataset's usual place / ATO_DATA_ROOT)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--workers", type=int, help="DataLoader worker processes")
    g.add_argument("--train-subset", type=int, metavar="N", help="train on the first N images only")
    g = train.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--optimizer", help="sgd or adamw")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--weight-decay", type=float)
    g = train.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--channels-last", choices=["auto", "true", "false"])
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    g.add_argument("--out-dir", help="parent folder of run folders (default runs/)")
    g.add_argument("--name", help="run folder name (default <model>-<data>)")
    g.add_argument(
        "--resume", metavar="auto|PATH",
        help="continue from the newest readable checkpoint of the run dir (auto: last.pt, else prev.pt) or a file",
    )
    g.add_argument(
        "--checkpoint-every-steps", type=int, metavar="N",
        help="also write last.pt every N steps, mid-epoch (0: at epoch ends only; default 500)",
    )  # fmt: skip
    g.add_argument("--max-steps-per-epoch", type=int, metavar="N", help="cut epochs short (smoke tests)")
    g.add_argument("--tensorboard", action="store_true", default=None, help="also log to TensorBoard")
    g = train.add_argument_group("pruning")
    g.add_argument("--prune", metavar="METHOD", help="pruning method: none (default), ato, l1, magnitude")
    g.add_argument("--remove-flops", type=float, metavar="F", help="share of MACs to remove, e.g. 0.5")
    g.add_argument("--remove-params", type=float, metavar="F", help="share of parameters to remove")
    g.add_argument(
        "--surgery", choices=("freeze", "end"),
        help="ATO: cut the network when the mask freezes and train the compact model on (freeze, default), "
        "or at the end as the paper (end)",
    )  # fmt: skip
    g = train.add_argument_group("distributed (see docs/distributed.md)")
    g.add_argument("--nproc", type=int, metavar="N",
                   help="train with DDP in N processes on this machine (one per GPU); --batch-size is global")
    g.add_argument("--nnodes", type=int, metavar="N", help="number of machines (run the command on each)")
    g.add_argument("--node-rank", type=int, metavar="R", help="this machine's index, 0..nnodes-1")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous address for --nnodes > 1")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", parents=[common], help="evaluate a checkpoint on its dataset's test split")
    ev.add_argument("--checkpoint", required=True, help="a last.pt written by 'ato train'")
    ev.add_argument("--data", help="dataset name (default: the one in the checkpoint's config)")
    ev.add_argument("--data-root", help="dataset folder")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    ev.set_defaults(func=cmd_eval)

    info = sub.add_parser(
        "info", parents=[common], help="parameters, MACs and channel groups of a model"
    )
    info.add_argument("--model", required=True,
                      help="zoo name, or module:attr of your own model, e.g. mypkg.nets:MyNet")
    info.add_argument("--set", action="append", metavar="model.kwargs.KEY=VALUE",
                      help="a constructor option of the model, e.g. --set model.kwargs.width=32 (repeatable)")
    info.add_argument("--input", default="3x32x32", help="input shape CxHxW (default 3x32x32)")
    info.add_argument("--num-classes", type=int, default=10)
    info.add_argument(
        "--no-groups", dest="groups", action="store_false", help="leave out the table of channel groups"
    )
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser(
        "demo", parents=[common], help="train + prune ResNet-20 on Fashion-MNIST (configs/demo.yaml)"
    )
    demo.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--out-dir", help="parent folder of the run folder 'demo' (default runs/)")
    demo.add_argument("--max-steps-per-epoch", type=int, metavar="N", help="cut epochs short (quick look)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _setup_logging(verbose: bool) -> None:
    """INFO and up to stdout as bare messages; warnings and errors say so. Replaces our earlier handler."""

    class _Format(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            msg = super().format(record)
            return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"

    for old in [h for h in log.handlers if getattr(h, "_ato_cli", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stdout)
    handler._ato_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_Format("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_WORKER = re.compile(r"^Caught \w+ in DataLoader (worker process \d+)")


def user_message(exc: BaseException) -> str:
    """The one-line text ``ato`` prints for a user error: whitespace collapsed, terminal colour codes removed.

    A DataLoader worker re-raises an error in the main process with the worker's whole traceback as the
    message; only the original message is kept (with the worker named), so no traceback reaches the user.
    """
    text = _ANSI.sub("", str(exc))
    worker = _WORKER.match(text)
    if worker and "Original Traceback" in text:
        # The traceback ends with "<module>.<ExcName>: <original message>" (possibly several lines).
        name = re.escape(type(exc).__name__)
        last = list(re.finditer(rf"^(?:[\w.]+\.)?{name}: ", text, re.M))
        if last:
            text = f"{text[last[-1].end():]} (in DataLoader {worker.group(1)})"
    return " ".join(text.split()) or type(exc).__name__


def _warning_printer(verbose: bool) -> Any:
    """A ``warnings.showwarning`` that logs ``warning: <message>`` like every other warning of ``ato``.

    Python's own display adds the file, line and source of the ``warnings.warn`` call, which is noise to a
    CLI user (``--verbose`` keeps the location).
    """

    def show(message: Any, category: type[Warning], filename: str, lineno: int, *_: Any, **__: Any) -> None:
        text = " ".join(str(message).split())
        log.warning(f"{text} ({category.__name__} at {filename}:{lineno})" if verbose else text)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ato``; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; return its status instead of exiting the caller
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    verbose = bool(getattr(args, "verbose", False))
    _setup_logging(verbose)
    try:
        with warnings.catch_warnings():  # restores the caller's warning display afterwards
            warnings.showwarning = _warning_printer(verbose)
            return int(args.func(args) or 0)
    except UserError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        # Writes other than checkpoints and exports (metrics.csv, mask.json, plots): the checkpoints written
        # so far are complete, so the run can be resumed once there is room.
        if verbose:
            traceback.print_exc()
        print(
            f"error: the disk is full ({exc}); free space or choose another --out-dir, then continue the run "
            "with --resume auto",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`ato info ... | head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
