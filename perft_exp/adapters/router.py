"""`PeftRouter`: variant R's own learned router over its N PEFT experts.

q = softmax_fp32(W_r x), J = topk(q, K), v = q_J / sum(q_J). W_r is (N, D), no bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PeftRouter(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.weight = nn.Parameter(
            torch.empty(num_experts, hidden_size, dtype=dtype, device=device)
        )  # (N, D)
        with torch.no_grad():  # nn.Linear's default init
            bound = 1.0 / math.sqrt(hidden_size)
            self.weight.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, D) -> logits (T, N), renormalised top-K weights (T, K) fp32, indices (T, K)."""
        logits = F.linear(x.to(self.weight.dtype), self.weight)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top, indices = torch.topk(probs, self.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), indices
