"""`PeftExperts`: N PEFT experts of one layer, stored as stacked tensors and computed in batched calls.

Expert j maps x (D,) to  s * f(x A_j) B_j  with A_j (D, r), B_j (r, D):
  LoRA form:    f = identity, s = alpha / r
  adapter form: f = activation, s = 1
Three ways to compute a routed mixture  y_t = sum_{j in J_t} w_tj * expert_j(x_t):
  dense:   all N experts for all tokens in two matmuls, unchosen experts masked by a zero weight.
           Cheapest when N * r is small (R with a few experts, D, S).
  grouped: only the chosen (token, expert) pairs, sorted by expert and computed with one grouped
           matmul per projection (torch.nn.functional.grouped_mm). Needed when N >> K (E: 64 experts, top-8).
  loop:    a Python loop over experts (perft_exp.adapters.reference); the oracle and the benchmark's strawman.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from perft_exp.adapters import reference

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm's backward needs it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def grouped_mm_supported(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether torch's grouped_mm kernel takes these operands: x (S, K), w (G, K, M).

    The kernels need 16-byte aligned row strides; on CUDA they need bf16 and compute capability 8.0+.
    """
    if not hasattr(F, "grouped_mm") or x.device.type == "meta":
        return False
    size = w.element_size()
    if (w.shape[-1] * size) % 16 or (w.shape[-2] * size) % 16:
        return False
    if x.device.type == "cuda":
        return w.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return x.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16)


class PeftExperts(nn.Module):
    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        bottleneck: int,
        *,
        form: str = "lora",
        activation: str = "silu",
        scaling: float = 2.0,
        init: str = "paper",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_experts, self.hidden_size, self.bottleneck = num_experts, hidden_size, bottleneck
        self.form, self.scaling, self.init = form, scaling, init
        self.act = _ACTIVATIONS[activation] if form == "adapter" else None
        factory = {"dtype": dtype, "device": device}
        self.A = nn.Parameter(torch.empty(num_experts, hidden_size, bottleneck, **factory))  # (N, D, r) down
        self.B = nn.Parameter(torch.empty(num_experts, bottleneck, hidden_size, **factory))  # (N, r, D) up
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "paper":
                # The authors' init: A ~ N(0, 2/r) (the variance uses r, not the fan-in), B ~ N(0, 1e-6^2).
                self.A.normal_(0.0, math.sqrt(2.0 / self.bottleneck))
                self.B.normal_(0.0, 1e-6)
            else:  # zero_b: nn.Linear's default for A, exact zeros for B: the model is unchanged at step 0
                bound = 1.0 / math.sqrt(self.hidden_size)
                self.A.uniform_(-bound, bound)
                self.B.zero_()

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden={self.hidden_size}, bottleneck={self.bottleneck}, form={self.form}"

    def _f(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h) if self.act is not None else h

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """sum_j expert_j(x) for x (T, D): all experts always on (D and S) is one rank-N*r LoRA."""
        N, D, r = self.A.shape
        a = self.A.permute(1, 0, 2).reshape(D, N * r)  # (D, N*r)
        h = self._f(x @ a)  # (T, N*r)
        return (h @ self.B.reshape(N * r, D)) * self.scaling  # (T, D)

    def forward_routed(
        self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, impl: str = "auto"
    ) -> torch.Tensor:
        """sum_k weights[t, k] * expert_{indices[t, k]}(x_t) for x (T, D), weights and indices (T, K)."""
        if impl == "auto":
            impl = self.choose_impl(indices.shape[-1])
        if impl == "grouped" and not grouped_mm_supported(x, self.A):
            impl = "dense"
        if impl == "dense":
            return self._dense(x, weights, indices)
        if impl == "grouped":
            return self._grouped(x, weights, indices)
        if impl == "loop":
            return reference.routed_loop(x, weights, indices, self.A, self.B, self._f, self.scaling)
        raise ValueError(f"unknown impl {impl!r}")

    def choose_impl(self, top_k: int) -> str:
        """Dense costs ~N*r per token, grouped ~K*r plus a sort and a gather of K copies of x."""
        if self.num_experts * self.bottleneck <= 256 or self.num_experts <= 2 * top_k:
            return "dense"
        return "grouped"

    def _dense(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        N, D, r = self.A.shape
        T = x.shape[0]
        h = self._f(x @ self.A.permute(1, 0, 2).reshape(D, N * r))  # (T, N*r)
        gate = torch.zeros(T, N, dtype=h.dtype, device=h.device).scatter(1, indices, weights.to(h.dtype))
        h = (h.view(T, N, r) * gate.unsqueeze(-1)).view(T, N * r)  # unchosen experts weigh 0
        return (h @ self.B.reshape(N * r, D)) * self.scaling

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        T, K = indices.shape
        flat = indices.reshape(-1)  # (S,) with S = T*K
        order = torch.argsort(flat, stable=True)
        token = order // K  # token of each sorted (token, expert) pair
        offsets = torch.cumsum(torch.bincount(flat, minlength=self.num_experts), 0).to(torch.int32)
        xs = x[token]  # (S, D)
        h = self._f(F.grouped_mm(xs, self.A, offs=offsets))  # (S, r)
        h = h * (weights.reshape(-1)[order].to(h.dtype) * self.scaling).unsqueeze(-1)
        ys = F.grouped_mm(_ContiguousGrad.apply(h), self.B, offs=offsets)  # (S, D)
        ys = _ContiguousGrad.apply(ys)
        return torch.zeros_like(x).index_add(0, token, ys)
