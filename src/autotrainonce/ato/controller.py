"""The ATO controller: a tiny input-independent network that proposes a channel mask per prunable group.

Fixed orthogonal embeddings (one per group) run through a bidirectional GRU as a sequence, so each group's
decision sees the others; a per-group linear head gives one logit per channel. A Gumbel-sigmoid relaxation gives
soft gates, and a straight-through hard mask is used wherever a binary decision is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Controller"]


class Controller(nn.Module):
    """Proposes masks for groups of sizes ``sizes``.

    Args:
        sizes: channels per prunable group, in sequence order.
        embed_dim: size of the fixed per-group embedding.
        hidden_size: GRU hidden size per direction (the head input is twice this).
        temperature: Gumbel-sigmoid temperature T.
        offset: logit offset b; positive values start every channel near "keep".
        min_channels: a hard mask keeps at least this many channels per group (the highest scores), so that a
            group is never emptied by accident; 0 disables.
        head_init: scale of the heads' initial weights (1: PyTorch's default init; 0: all logits of a group start
            equal, so any order among its channels is learned, not drawn at init).
        generator: CPU generator for the Gumbel noise and the embedding init (reproducible, device-independent).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 64,
        hidden_size: int = 128,
        temperature: float = 0.4,
        offset: float = 3.0,
        min_channels: int = 1,
        head_init: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("the controller needs at least one prunable group")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.sizes = [int(s) for s in sizes]
        self.temperature = float(temperature)
        self.offset = float(offset)
        self.min_channels = int(min_channels)
        self.generator = generator
        emb = torch.empty(len(self.sizes), embed_dim)
        nn.init.orthogonal_(emb, generator=generator)
        # A buffer, not a parameter: the embeddings only tell the groups apart and are never trained.
        self.register_buffer("embeddings", emb)
        self.gru = nn.GRU(embed_dim, hidden_size, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden_size)
        self.heads = nn.ModuleList(nn.Linear(2 * hidden_size, n, bias=False) for n in self.sizes)
        # scaled after the default init, so the random draws (and everything seeded after them) stay the same
        with torch.no_grad():
            for head in self.heads:
                head.weight.mul_(float(head_init))

    def logits(self) -> list[torch.Tensor]:
        """Noiseless logits, one tensor of shape (size,) per group."""
        seq, _ = self.gru(self.embeddings.unsqueeze(0))
        feats = F.relu(self.norm(seq[0]))
        return [head(feats[i]) for i, head in enumerate(self.heads)]

    def _noise(self, n: int, like: torch.Tensor) -> torch.Tensor:
        # Logistic noise (the difference of two Gumbels), drawn on the CPU generator and moved, so the
        # draws do not depend on the device and match across processes seeded alike.
        u = torch.rand(n, generator=self.generator).clamp_(1e-6, 1.0 - 1e-6)
        return (torch.log(u) - torch.log1p(-u)).to(device=like.device, dtype=like.dtype)

    def _keep_min(self, hard: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        k = min(self.min_channels, hard.numel())
        if k <= 0 or int(hard.sum()) >= k:
            return hard
        top = torch.topk(score.detach(), k).indices
        return hard.index_fill(0, top, 1.0)

    def forward(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(soft, hard)`` lists of float masks, one (size,) tensor per group.

        Training mode: ``soft = sigmoid((logits + noise + b) / T)`` and ``hard = 1[soft >= 0.5]`` with the
        straight-through estimator (forward value ``hard``, gradient of ``soft``). Eval mode: no noise, so the
        hard mask is a deterministic function of the weights.
        """
        soft_list, hard_list = [], []
        for logit in self.logits():
            z = logit + self.offset
            if self.training:
                z = z + self._noise(z.numel(), z)
            soft = torch.sigmoid(z / self.temperature)
            # z >= 0 is soft >= 0.5 without the rounding of the sigmoid near 0.5.
            hard = self._keep_min((z >= 0).to(soft.dtype), soft)
            soft_list.append(soft)
            hard_list.append(hard - soft.detach() + soft)
        return soft_list, hard_list

    def keep_probabilities(self) -> list[torch.Tensor]:
        """P(keep) of every channel under the training-mode noise: ``sigmoid(logits + b)`` (the logistic noise
        has unit scale, so a channel is kept by a draw exactly when its noise exceeds ``-(logit + b)``; the
        ``min_channels`` rule of the hard draws is left out).
        Differentiable: the expected-cost resource term trains on it without sampling noise."""
        return [torch.sigmoid(logit + self.offset) for logit in self.logits()]

    @torch.no_grad()
    def scores(self) -> list[torch.Tensor]:
        """Noiseless ``logits + b`` per group: the deterministic mask keeps the channels with score >= 0."""
        return [(logit + self.offset).detach() for logit in self.logits()]

    @torch.no_grad()
    def sample(self, deterministic: bool = False) -> list[torch.Tensor]:
        """Bool keep-masks: a noisy draw, or with ``deterministic`` the thresholded noiseless logits."""
        was = self.training
        self.train(not deterministic)
        try:
            _, hard = self()
        finally:
            self.train(was)
        return [h > 0.5 for h in hard]
