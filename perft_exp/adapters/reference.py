"""Slow, obviously-correct PEFT-expert computations: a Python loop over experts.

This is how the authors' code computes PERFT. It is the oracle the tests hold the batched paths to,
and the `*_loop` cases of scripts/bench.py. Never used on a hot path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def routed_loop(
    x: torch.Tensor,  # (T, D)
    weights: torch.Tensor,  # (T, K)
    indices: torch.Tensor,  # (T, K)
    A: torch.Tensor,  # (N, D, r)
    B: torch.Tensor,  # (N, r, D)
    f: Callable[[torch.Tensor], torch.Tensor],
    scaling: float,
    keep: torch.Tensor | None = None,  # (T, K, D) LoRA form, (T, K, r) adapter form: dropout per routed pair
    keep_scale: float = 1.0,  # 1 / (1 - p)
    form: str = "lora",
) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{indices[t, k]}(x_t), one expert at a time: x (T, D), weights and
    indices (T, K), A (N, D, r), B (N, r, D) -> (T, D)."""
    y = torch.zeros_like(x)
    for e in range(A.shape[0]):
        token, slot = torch.where(indices == e)
        if token.numel() == 0:
            continue
        m = None if keep is None else keep[token, slot].to(x.dtype) * keep_scale  # this expert's own masks
        xe = x[token] * m if m is not None and form == "lora" else x[token]
        pre = xe @ A[e]
        if m is not None and form != "lora":
            pre = pre * m
        out = f(pre) @ B[e] * scaling  # (n_e, D)
        y = y.index_add(0, token, out * weights[token, slot].unsqueeze(-1).to(out.dtype))
    return y


def all_loop(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    scaling: float,
    keep: torch.Tensor | None = None,  # (T, N, D) LoRA form, (T, N, r) adapter form
    keep_scale: float = 1.0,
    form: str = "lora",
) -> torch.Tensor:
    """sum_j expert_j(x), one expert at a time (D, S): x (T, D), A (N, D, r), B (N, r, D) -> (T, D)."""
    y = torch.zeros_like(x)
    for e in range(A.shape[0]):
        m = None if keep is None else keep[:, e].to(x.dtype) * keep_scale
        pre = (x * m if m is not None and form == "lora" else x) @ A[e]
        if m is not None and form != "lora":
            pre = pre * m
        y = y + f(pre) @ B[e] * scaling
    return y
