"""Vector quantisation: one module for the tokenizer's 1024 codes and the LAM's 8 actions."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser on L2-normalised vectors with a straight-through gradient.

    Loss: ||sg(z) - e||^2 + commitment * ||z - sg(e)||^2 (van den Oord et al., 2017), on unit
    vectors so the codebook cannot drift in scale. Codes unused for ``dead_code_steps`` training
    steps are re-seeded from the current batch (0 disables), which keeps small codebooks such as
    the LAM's 8 actions from collapsing. Under torch.distributed the usage counts are summed and
    the re-seeded codes broadcast from rank 0, so every replica keeps the same codebook.
    """

    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25, dead_code_steps: int = 100):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.commitment, self.dead_code_steps = commitment, dead_code_steps
        self.codebook = nn.Parameter(F.normalize(torch.randn(num_codes, dim), dim=-1))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))

    def codes(self) -> torch.Tensor:
        """The unit-norm codebook, (num_codes, dim)."""
        return F.normalize(self.codebook, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer ``indices`` of any shape -> (..., dim)."""
        return self.codes()[indices]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each vector of z (..., dim)."""
        z = F.normalize(z.float(), dim=-1)
        return (z @ self.codes().float().t()).argmax(dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (..., dim) -> (quantised z with straight-through grad, indices (...), stats).

        stats: ``loss`` (codebook + commitment), ``perplexity`` and ``usage`` (fraction of codes
        used in this batch).
        """
        z = F.normalize(z.float(), dim=-1)
        codes = self.codes().float()
        indices = (z @ codes.t()).argmax(dim=-1)
        e = codes[indices]
        loss = F.mse_loss(e, z.detach()) + self.commitment * F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()

        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        if self.training:
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            self._reset_dead_codes(counts, z.detach().reshape(-1, self.dim))
        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
        usage = (counts > 0).float().mean()
        return z_q, indices, {"loss": loss, "perplexity": perplexity, "usage": usage}

    @torch.no_grad()
    def _reset_dead_codes(self, counts: torch.Tensor, batch: torch.Tensor) -> None:
        self.steps_unused += 1
        self.steps_unused[counts > 0] = 0
        if self.dead_code_steps <= 0:
            return
        dead = self.steps_unused >= self.dead_code_steps
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = torch.randint(0, batch.shape[0], (n_dead,), device=batch.device)
        new = batch[pick].to(self.codebook.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new, src=0)
        self.codebook.data[dead] = new
        self.steps_unused[dead] = 0
