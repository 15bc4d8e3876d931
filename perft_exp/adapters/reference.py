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
) -> torch.Tensor:
    y = torch.zeros_like(x)
    for e in range(A.shape[0]):
        token, slot = torch.where(indices == e)
        if token.numel() == 0:
            continue
        out = f(x[token] @ A[e]) @ B[e] * scaling  # (n_e, D)
        y = y.index_add(0, token, out * weights[token, slot].unsqueeze(-1).to(out.dtype))
    return y


def all_loop(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    scaling: float,
) -> torch.Tensor:
    y = torch.zeros_like(x)
    for e in range(A.shape[0]):
        y = y + f(x @ A[e]) @ B[e] * scaling
    return y
