"""The ``ato`` command line: train, eval, info and demo.

User errors (bad flags, unknown names, missing data, bad configs or checkpoints) print one ``error: ...`` line
on stderr and exit with status 2; ``--verbose`` adds the traceback. Run ``ato COMMAND --help`` for the flags.
:mod:`.app` holds the parser and the entry point, :mod:`.commands` what each sub-command does.
"""

from __future__ import annotations

from .app import build_parser, main, user_message
from .commands import DEMO_CONFIG, _train_config, demo_config, parse_input_shape

__all__ = ["main", "build_parser", "DEMO_CONFIG", "demo_config", "parse_input_shape", "user_message", "_train_config"]
