"""`PeftRouter`: variant R's own learned router over its N PEFT experts.

q = softmax_fp32(W_r x), J = topk(q, K), v = q_J / sum(q_J). W_r is (N, D), no bias. Computed as
J = topk(W_r x, K) (softmax keeps the order) and v = softmax_fp32((W_r x)_J): the same weights, up to
rounding.

Init (`perft.router_init`): "linear", nn.Linear's U(-1/sqrt(D), 1/sqrt(D)); "authors", N(0, 0.02): the
authors' router was a missing key of `from_pretrained`, so it got the model's `_init_weights` (std =
initializer_range, 0.02 for OLMoE and Mixtral). Its dtype (`perft.router_dtype`) is fp32 or, as theirs, the
model's: in bf16 an AdamW update at lr 1e-5 is mostly below half a unit in the last place of a weight of size
~0.02, so it is lost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

AUTHORS_INIT_STD = 0.02  # transformers' initializer_range of OLMoE-1B-7B and Mixtral-8x7B


class PeftRouter(nn.Module):
    """R's learned router W_r (N, D): x (T, D) -> logits (T, N), top-K weights (T, K), indices (T, K)."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        *,
        init: str = "linear",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        # (N, D)
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=dtype, device=device))
        with torch.no_grad():
            if init == "authors":
                self.weight.normal_(0.0, AUTHORS_INIT_STD)
            elif init == "linear":
                bound = 1.0 / math.sqrt(hidden_size)
                self.weight.uniform_(-bound, bound)
            else:
                raise ValueError(f"unknown router init {init!r}")

    def extra_repr(self) -> str:
        """N and K, for the module's repr."""
        return f"num_experts={self.num_experts}, top_k={self.top_k}"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, D) -> W_r x (T, N) in the router's dtype."""
        weight = self.weight
        return F.linear(x if x.dtype == weight.dtype else x.to(weight.dtype), weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, D) -> logits (T, N), renormalised top-K weights (T, K) fp32, indices (T, K)."""
        logits = self.logits(x)
        # softmax over the K largest logits: the top-K probabilities renormalised, in two kernels, not four
        top, indices = torch.topk(logits, self.top_k, dim=-1)
        return logits, torch.softmax(top, dim=-1, dtype=torch.float32), indices
