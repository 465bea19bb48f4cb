"""Framework integrations: run Auto-Train-Once inside another library's training loop.

- :mod:`autotrainonce.integrations.lightning`: ``AutoTrainOnceCallback``, a PyTorch Lightning ``Callback``
  (``pip install lightning``).
- :mod:`autotrainonce.integrations.hf`: ``AutoTrainOnceCallback``, a Hugging Face ``transformers.TrainerCallback``
  (``pip install transformers accelerate``).

Import the submodule you need; this package imports neither framework (see docs/integrations.md).
"""

from __future__ import annotations

__all__: list[str] = []
