"""``python -m autotrainonce.cli``: what torchrun starts in every process of ``ato train --nproc N``."""

import sys

from .app import main

sys.exit(main())
