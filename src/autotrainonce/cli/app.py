"""The ``ato`` parser and entry point: flags, logging, and one ``error:`` line (exit 2) for every user error."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import UserError, is_disk_full
from .commands import cmd_demo, cmd_eval, cmd_info, cmd_train

__all__ = ["build_parser", "main", "user_message"]

log = logging.getLogger("autotrainonce")


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
