"""`PeftExperts`: N PEFT experts of one layer, stored as stacked tensors and computed in batched calls.

Expert j maps x (D,) to  s * f(x A_j) B_j  with A_j (D, r), B_j (r, D):
  LoRA form:    f = identity, s = alpha / r
  adapter form: f = activation, s = 1
Five ways to compute a routed mixture  y_t = sum_{j in J_t} w_tj * expert_j(x_t), over K slots per token of
which a routing kind may mask some (weight 0: a variable number of experts per token,
perft_exp.adapters.routing):
  dense:   all N experts for all tokens in two matmuls, unchosen experts masked by a zero weight.
           Cheapest when N * r is small next to K * r (R with a few experts; D and S use it unmasked).
  grouped: only the chosen (token, expert) pairs, sorted by expert and computed with one grouped
           matmul per projection (torch.nn.functional.grouped_mm). Needed when N >> K (E: 64 experts, top-8).
           Masked slots are left out of the pairs.
           Custom autograd functions keep only (S, r) activations: the (S, D) gathered inputs and
           per-pair outputs are recomputed or summed away, never saved.
  gather:  for few tokens on CPU (decoding: one to a few dozen per call; a GPU runs them dense, choose_impl),
           each pair's rows of A and B read in place by two weighted row sums (F.embedding_bag):
             h_p = sum_d x_{t,d} A[e_p, d, :]                  bag of D rows of A as (N*D, r), per pair
             y_t = sum_{p of t} sum_j s w_p f(h_p)_j B[e_p, j, :]   bag of K*r rows of B (N*r, D), per token
           No sort, no per-expert loop, no copy of the chosen experts' weights: what grouped costs per expert
           (a kernel call for each of the N groups, chosen or not) is what dominates one token's cost.
           Masked slots are computed at weight 0.
  select:  for a handful of pairs (decoding at batch 1 or 2: at most _SELECT_PAIRS), each pair's A and B
           copied out of the stacks (index_select) and the pairs computed by two batched matmuls, the
           second summing each token's K pairs:
             h_p = x_{t_p} A[e_p]  (one bmm over the pairs)     y_t = [h_t1 .. h_tK] [B[e_t1]; ..; B[e_tK]]
           Five kernels whatever N and K; the copies (2 D r values per pair) outgrow the row sums' reads
           past a few dozen pairs. Masked slots are computed at weight 0.
  loop:    a Python loop over experts (perft_exp.adapters.reference); the oracle and the benchmark's strawman.
E has a sixth, `fused` (perft_exp.adapters.fused): grouped, inside the frozen experts' own grouped
computation, whose sort, gathered inputs and sum over each token's pairs it shares (`sorted_pairs` below).

Dropout with `dropout_scope=expert` (the authors': each PEFT expert is a module with its own nn.Dropout), in
training only: every (token, expert) pair draws its own keep mask m ~ Bernoulli(1 - p), scaled by 1 / (1 - p),
applied where the authors apply it in each form:
  LoRA form:    expert_j(x) = s * B_j A_j (m_tj * x)        mask over D, on the expert's input
  adapter form: expert_j(x) = W_up act(m_tj * (W_down x))   mask over r, after W_down, before the activation
The masks are one tensor `keep` (T, K, D or r), one row per routed pair (K = N for the always-on experts of D
and S), drawn here or passed in (the tests hand the same masks to every path and to the loop oracle). Costs:
grouped keeps a bool (S, D) mask for backward; dense computes every expert for each of the K masked inputs
(K times the dense work, a (T, K, D) masked input kept for backward); D/S keep a (T, N, D) masked input.
`dropout_scope=shared` is one mask on x shared by all experts, drawn by the layer (perft_exp.adapters.layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from perft_exp.adapters import reference

# What moving one routed pair's D-vector in and out costs in the grouped path, in units of dense columns
# (choose_impl): grouped beats dense once N*r > K*(r + 32) (CPU, fp32; docs/benchmarks.md).
_GATHER_COLUMNS = 32
# Up to this many (token, expert) pairs per call the gather path beats grouped (CPU, fp32, E on OLMoE's
# 64 experts top-8 at r=16: 1 token 50 us against 240, 64 tokens 420 against 570; docs/benchmarks.md).
_GATHER_PAIRS = 512
# Up to this many pairs per call the select path beats the row sums and dense (CPU, fp32, D=256, r=16, in the
# model: one token's decode step; docs/benchmarks.md): it runs a fixed five kernels.
_SELECT_PAIRS = 16
_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


@torch.library.custom_op("perft::grouped_mm", mutates_args=())
def _grouped_mm_op(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return F.grouped_mm(a, b, offs=offs)


@_grouped_mm_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:  # (S, K) @ (G, K, M) -> (S, M)
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[-1])  # (K, S) @ (S, M) -> (G, K, M)


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """F.grouped_mm; under torch.compile an opaque op of the same shapes, since the compiler's own
    grouped_mm takes only CUDA bf16 operands."""
    if torch.compiler.is_compiling():
        return _grouped_mm_op(a, b, offs)
    return F.grouped_mm(a, b, offs=offs)


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`; `t` itself when it already is (no call into torch: a decoding step makes dozens)."""
    return t if t.dtype == dtype else t.to(dtype)


def plus(y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """residual + y in the residual's dtype; y when there is no residual."""
    return y if residual is None else residual + cast(y, residual.dtype)


def _fusable(residual: torch.Tensor | None, h: torch.Tensor) -> bool:
    """Whether the last matmul can add `residual` itself (addmm, baddbmm): same dtype as the adapter's."""
    return residual is not None and residual.dtype == h.dtype


def _masked(xs: torch.Tensor, keep: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Inverted dropout with a given keep mask: xs * keep / (1 - p); xs itself when there is no mask."""
    return xs if keep is None else xs * keep.to(xs.dtype) * scale


class _GatherGroupedMM(torch.autograd.Function):
    """h_p = (keep_p * x[token_p]) @ W[e_p] for expert-sorted pairs p: x (T, D), W (N, D, r) -> h (S, r).

    The gathered (S, D) copy of x is not kept for backward: W's gradient gathers it again, which costs
    one (S, D) copy instead of holding S * D activations per layer (S = T * K, 8x the layer input).
    An expert-scope dropout mask `keep` (S, D) is kept as bool (a quarter of the fp32 copy).
    `xs`: that copy when it was already gathered (by the frozen experts' own computation,
    perft_exp.adapters.fused); the input's gradient then goes to it rather than to x.
    """

    @staticmethod
    def forward(ctx, x, w, token, offsets, keep=None, scale: float = 1.0, xs=None):
        ctx.save_for_backward(x, w, token, offsets, keep)
        ctx.scale, ctx.gathered = scale, xs is not None
        xs = x.index_select(0, token) if xs is None else xs
        return _grouped_mm(_masked(xs, keep, scale), w, offsets)

    @staticmethod
    def backward(ctx, grad):
        x, w, token, offsets, keep = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_xs = None
        if ctx.needs_input_grad[6 if ctx.gathered else 0]:
            # (S, D)
            grad_xs = _masked(_grouped_mm(grad, w.transpose(-2, -1), offsets), keep, ctx.scale)
            if not ctx.gathered:
                grad_x, grad_xs = torch.zeros_like(x).index_add_(0, token, grad_xs), None
        if ctx.needs_input_grad[1]:
            xs = _masked(x.index_select(0, token), keep, ctx.scale)
            grad_w = _grouped_mm(xs.t(), grad, offsets)  # (N, D, r)
        return grad_x, grad_w, None, None, None, None, grad_xs


class _GroupedMM(torch.autograd.Function):
    """ys_p = h_p @ W[e_p] for expert-sorted pairs: h (S, r), W (N, r, D) -> (S, D), each pair's output
    (summed into the tokens by the caller); keeps only h and W."""

    @staticmethod
    def forward(ctx, h, w, offsets):
        ctx.save_for_backward(h, w, offsets)
        return _grouped_mm(h, w, offsets)

    @staticmethod
    def backward(ctx, grad):
        h, w, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_h = _grouped_mm(grad, w.transpose(-2, -1), offsets) if ctx.needs_input_grad[0] else None
        grad_w = _grouped_mm(h.t(), grad, offsets) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None


class _GroupedMMScatter(torch.autograd.Function):
    """y_t = sum over the pairs p of token t of h_p @ W[e_p]: h (S, r), W (N, r, D) -> y (T, D), plus
    `residual` (T, D) when given (the sums land on a copy of it: no zeros, no separate add).

    The (S, D) per-pair outputs are summed into their tokens at once and never kept.
    """

    @staticmethod
    def forward(ctx, h, w, token, offsets, num_tokens: int, residual=None):
        ctx.save_for_backward(h, w, token, offsets)
        ys = _grouped_mm(h, w, offsets)  # (S, D)
        out = ys.new_zeros(num_tokens, ys.shape[-1]) if residual is None else residual.clone()
        return out.index_add_(0, token, ys)

    @staticmethod
    def backward(ctx, grad):
        h, w, token, offsets = ctx.saved_tensors
        grad_s = grad.index_select(0, token)  # (S, D): each pair's share of its token's gradient
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h = _grouped_mm(grad_s, w.transpose(-2, -1), offsets)  # (S, r)
        if ctx.needs_input_grad[1]:
            grad_w = _grouped_mm(h.t(), grad_s, offsets)  # (N, r, D)
        return grad_h, grad_w, None, None, None, grad if ctx.needs_input_grad[5] else None


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
    """N PEFT experts of one layer: A (N, D, r) and B (N, r, D), in the LoRA or the adapter form."""

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
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_experts, self.hidden_size, self.bottleneck = num_experts, hidden_size, bottleneck
        self.form, self.scaling, self.init = form, scaling, init
        self.dropout = dropout  # expert scope: each (token, expert) pair its own mask (module docstring)
        self.act = _ACTIVATIONS[activation] if form == "adapter" else None
        factory = {"dtype": dtype, "device": device}
        self.A = nn.Parameter(torch.empty(num_experts, hidden_size, bottleneck, **factory))  # (N, D, r) down
        self.B = nn.Parameter(torch.empty(num_experts, bottleneck, hidden_size, **factory))  # (N, r, D) up
        self._rows: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # _row_tables
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise A and B: the authors' `paper` init, or `zero_b` (B = 0: the model starts unchanged)."""
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
        """N, the hidden size, the bottleneck and the form, for the module's repr."""
        return (
            f"num_experts={self.num_experts}, hidden={self.hidden_size}, "
            f"bottleneck={self.bottleneck}, form={self.form}"
        )

    def _f(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h) if self.act is not None else h

    @property
    def _scale(self) -> float:
        return 1.0 / (1.0 - self.dropout)

    def draw_keep(self, x: torch.Tensor, pairs: int) -> torch.Tensor | None:
        """Keep masks (T, pairs, D or r) for expert-scope dropout, or None outside training or at p = 0."""
        if not (self.training and self.dropout > 0):
            return None
        width = self.hidden_size if self.form == "lora" else self.bottleneck
        return torch.rand(x.shape[0], pairs, width, device=x.device) >= self.dropout

    def forward_all(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_j expert_j(x) (T, D) for x (T, D): all experts always on (D and S) is one rank-N*r LoRA.
        `keep` (T, N, D or r): expert-scope dropout masks (drawn here in training unless given). `residual`
        (T, D): returned plus the sum, in its dtype (the last matmul adds it when the dtypes match)."""
        N, D, r = self.A.shape
        keep = self.draw_keep(x, N) if keep is None else keep
        a = self.A.permute(1, 0, 2).reshape(D, N * r)  # (D, N*r)
        if keep is not None and self.form == "lora":  # each expert reads its own masked copy of x
            h = torch.einsum("tnd,ndr->tnr", _masked(x.unsqueeze(1), keep, self._scale), self.A)
            h = h.reshape(-1, N * r)  # (T, N*r)
        else:
            h = x @ a  # (T, N*r)
            if keep is not None:  # adapter form: after W_down
                h = _masked(h, keep.reshape(h.shape), self._scale)
        return self._up(self._f(h), self.B.reshape(N * r, D), residual)  # (T, D)

    def forward_routed(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        impl: str = "auto",
        keep: torch.Tensor | None = None,
        taken: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sum_k weights[t, k] * expert_{indices[t, k]}(x_t) (T, D) for x (T, D), weights and indices (T, K).
        `keep` (T, K, D or r): expert-scope dropout masks, one per routed pair (drawn here in training unless
        given). `taken` (T, K) bool: the slots in use (masked ones carry weight 0; grouped skips them); None:
        all. `impl="auto"` picks by `choose_impl` for this call's number of tokens. `residual` (T, D):
        returned plus the sum, in its dtype (dense, select and grouped add it in their last step when the
        dtypes match).
        """
        keep = self.draw_keep(x, indices.shape[-1]) if keep is None else keep
        impl = self.path(impl, x, indices.shape[-1])
        if impl == "dense":
            return self._dense(x, weights, indices, keep, residual)
        if impl == "select":
            return self._select(x, weights, indices, keep, residual)
        if impl == "grouped":
            return self._grouped(x, weights, indices, keep, taken, residual)
        if impl == "gather":
            y = self._gather(x, weights, indices, keep)
        elif impl == "loop":
            y = reference.routed_loop(
                x, weights, indices, self.A, self.B, self._f, self.scaling, keep, self._scale, self.form
            )
        else:
            raise ValueError(f"unknown impl {impl!r}")
        return plus(y, residual)

    def path(self, impl: str, x: torch.Tensor, top_k: int) -> str:
        """The path `forward_routed(x, ..., impl)` runs for x (T, D) and K = `top_k`: auto's pick
        (`choose_impl`); fused as grouped (here E runs beside the block: the frozen experts' computation did
        not take it in); grouped as dense where grouped_mm does not take the inputs."""
        if impl == "auto":
            impl = self.choose_impl(top_k, x.shape[0], x.device.type)
        if impl == "fused":
            impl = "grouped"
        if impl == "grouped" and not grouped_mm_supported(x, self.A):
            impl = "dense"
        return impl

    def choose_impl(self, top_k: int, num_tokens: int | None = None, device_type: str = "cpu") -> str:
        """The cheaper path by a cost model measured on CPU (fp32, D=256, r=16, fwd+bwd).

        Dense does N*r columns of work per token; grouped does K*r per token plus, per chosen pair,
        sorting and moving a D-vector five times (gathers and scatters), which cost about as much as
        32 more columns. At r=16 grouped wins for N > 3K: E (64 experts, top-8), R with 8 experts top-2.
        Where grouped wins, a call of at most _GATHER_PAIRS (token, expert) pairs (`num_tokens` x K:
        decoding) takes the gather path instead: grouped pays a kernel call per expert, chosen or not.
        At most _SELECT_PAIRS pairs (a decode step at batch 1 or 2) take the select path whatever N: its
        fixed five kernels cost less than dense's masking or the row sums' bookkeeping.
        On a GPU (`device_type` not "cpu") the gather band runs dense: there a decode step's PEFT experts are
        bound by kernel launches, not by arithmetic or bytes (E's weights on OLMoE-1B-7B: 8 MB a layer), and
        the row sums were measured as slow as the frozen experts themselves (H200, 64 tokens: 615 us against
        571; docs/benchmarks.md), while dense is two matmuls and three small kernels.
        """
        if num_tokens is not None and num_tokens * top_k <= _SELECT_PAIRS:
            return "select"
        if self.num_experts * self.bottleneck <= top_k * (self.bottleneck + _GATHER_COLUMNS):
            return "dense"
        if num_tokens is not None and num_tokens * top_k <= _GATHER_PAIRS:
            return "gather" if device_type == "cpu" else "dense"
        return "grouped"

    def _dense(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        keep: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        N, D, r = self.A.shape
        T = indices.shape[0]
        if keep is None:
            h = self._f(x @ self.A.permute(1, 0, 2).reshape(D, N * r))  # (T, N*r)
            gate = torch.zeros(T, N, dtype=h.dtype, device=h.device).scatter(
                1, indices, cast(weights, h.dtype)
            )
            h = (h.view(T, N, r) * gate.unsqueeze(-1)).view(T, N * r)  # unchosen experts weigh 0
        else:
            h = self._dense_dropout(x, weights, indices, keep)
        return self._up(h, self.B.reshape(N * r, D), residual)

    def _up(self, h: torch.Tensor, b: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """s * h @ b, plus `residual` when given: added by the matmul itself (addmm, or baddbmm for a batch of
        products) when the dtypes match, else after it in the residual's dtype."""
        if _fusable(residual, h):
            return (torch.baddbmm if h.dim() == 3 else torch.addmm)(residual, h, b, alpha=self.scaling)
        return plus((h @ b) * self.scaling, residual)

    def _dense_dropout(
        self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """The dense path's (T, N*r) gated activations under expert-scope dropout masks `keep`."""
        N, D, r = self.A.shape
        T, K = indices.shape
        a = self.A.permute(1, 0, 2).reshape(D, N * r)
        # Expert-scope dropout: the k-th routed pair of a token reads its own masked input (LoRA form) or
        # masks its own W_down output (adapter form); every expert is computed for each of the K inputs,
        # the chosen kept.
        # (T, K|1, D)
        xk = _masked(x.unsqueeze(1), keep, self._scale) if self.form == "lora" else x.unsqueeze(1)
        hk = (xk @ a).view(T, -1, N, r).expand(T, K, N, r)
        # (T, K, r): the chosen experts
        hk = hk.gather(2, indices.view(T, K, 1, 1).expand(T, K, 1, r)).squeeze(2)
        if self.form != "lora":
            hk = _masked(hk, keep, self._scale)
        hk = self._f(hk) * weights.to(hk.dtype).unsqueeze(-1)
        # A token meets an expert at most once: scattering the K pairs into their expert slots sums nothing.
        h = hk.new_zeros(T, N, r).scatter(1, indices.unsqueeze(-1).expand(T, K, r), hk)
        return h.view(T, N * r)

    def _grouped(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        keep: torch.Tensor | None = None,
        taken: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        T, K = indices.shape
        # Unstable sort: a token meets an expert at most once, so any order within a group sums the same.
        expert, order = torch.sort(indices.reshape(-1))  # (S,) with S = T*K
        # The pairs in use, still expert-sorted. Under torch.compile the masked pairs stay (at weight 0), so
        # that no shape depends on the routing.
        if taken is not None and not torch.compiler.is_compiling():
            used = taken.reshape(-1).index_select(0, order)
            order, expert = order[used], expert[used]
        token = order // K  # token of each expert-sorted (token, expert) pair
        # offsets[e]: the pairs of experts <= e; a search, not a bincount, so the shape is N whatever the data
        ids = torch.arange(self.num_experts, device=expert.device, dtype=expert.dtype)
        offsets = torch.searchsorted(expert, ids, right=True).to(torch.int32)
        keep = None if keep is None else keep.reshape(T * K, -1).index_select(0, order)  # (S, D or r)
        h = self._sorted_down(x, token, offsets, keep)
        w = weights.reshape(-1).index_select(0, order).to(h.dtype) * self.scaling  # (S,)
        h = h * w.unsqueeze(-1)
        fused = _fusable(residual, h)  # else the sums land on zeros, the residual added in its own dtype
        y = _GroupedMMScatter.apply(h, self.B, token, offsets, T, residual if fused else None)  # (T, D)
        return y if fused else plus(y, residual)

    def _sorted_down(
        self,
        x: torch.Tensor,
        token: torch.Tensor,
        offsets: torch.Tensor,
        keep: torch.Tensor | None,
        xs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f(x_t A[e]) (S, r) for the expert-sorted pairs (token t, expert e), with each form's dropout mask
        where the authors apply it (module docstring); `xs` (S, D): the pairs' inputs if already gathered."""
        if self.form == "lora":
            return self._f(_GatherGroupedMM.apply(x, self.A, token, offsets, keep, self._scale, xs))
        h = _GatherGroupedMM.apply(x, self.A, token, offsets, None, 1.0, xs)
        return self._f(_masked(h, keep, self._scale))

    def sorted_pairs(
        self,
        xs: torch.Tensor | None,
        x: torch.Tensor,
        token: torch.Tensor,
        offsets: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each expert-sorted pair's output, unweighted: s f(x_t A[e]) B[e] (S, D) for the pairs (token t, its
        expert e) sorted by expert, `offsets` (N,) int32 ending each expert's run, `keep` (S, D or r) their
        expert-scope dropout masks in the same order. `xs` (S, D): the pairs' inputs x[token] already
        gathered in A's dtype (regathered for backward, not kept), or None: gathered here from x (T, D).
        The routing weights and the sum over each token's pairs are the caller's (the frozen experts' grouped
        computation, perft_exp.adapters.fused)."""
        h = self._sorted_down(x, token, offsets, keep, xs)
        return _GroupedMM.apply(h * self.scaling, self.B, offsets)  # (S, D)

    def _select(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        keep: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        N, D, r = self.A.shape
        T, K = indices.shape
        expert = indices.reshape(-1)  # (S,), S = T*K pairs
        xs = x.unsqueeze(1).expand(T, K, D).reshape(T * K, 1, D)  # each pair's input
        if keep is not None and self.form == "lora":
            xs = _masked(xs, keep.reshape(T * K, 1, D), self._scale)
        h = torch.bmm(xs, self.A.index_select(0, expert)).view(T, K, r)  # (T, K, r)
        if keep is not None and self.form != "lora":
            h = _masked(h, keep, self._scale)
        h = self._f(h) * cast(weights.unsqueeze(-1), h.dtype)
        # y_t = [h_t1 .. h_tK] (1, K*r) @ the K chosen B stacked (K*r, D)
        b = self.B.index_select(0, expert).view(T, K * r, D)
        residual = None if residual is None else residual.view(T, 1, D)
        return self._up(h.view(T, 1, K * r), b, residual).view(T, D)

    def _gather(
        self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        N, D, r = self.A.shape
        T, K = indices.shape
        expert = indices.reshape(-1)  # (S,), S = T*K pairs
        rows_a, rows_b = self._row_tables(x.device)
        xs = x.unsqueeze(1).expand(T, K, D).reshape(T * K, D)  # each pair's input
        if keep is not None and self.form == "lora":
            xs = _masked(xs, keep.reshape(T * K, D), self._scale)
        # h_p = sum_d x_d A[e_p, d, :]: pair p's bag is rows e_p*D .. e_p*D + D-1 of A as an (N*D, r) table
        bags = rows_a.index_select(0, expert)  # (S, D)
        h = F.embedding_bag(bags, self.A.reshape(N * D, r), per_sample_weights=xs, mode="sum")  # (S, r)
        if keep is not None and self.form != "lora":
            h = _masked(h, keep.reshape(T * K, r), self._scale)
        h = self._f(h) * (cast(weights.reshape(-1, 1), h.dtype) * self.scaling)
        # y_t = sum over t's pairs p and j of h_pj B[e_p, j, :]: token t's bag is K*r rows of B as (N*r, D)
        bags = rows_b.index_select(0, expert).view(T, K * r)
        return F.embedding_bag(
            bags, self.B.reshape(N * r, D), per_sample_weights=h.view(T, K * r), mode="sum"
        )

    def _row_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The gather path's bags: row e of the first table lists expert e's rows of A as (N*D, r), of the
        second its rows of B as (N*r, D). Constants, built once per device (not buffers: a buffer would be
        saved, broadcast by DDP and gathered by ZeRO-3)."""
        tables = self._rows.get(device)
        if tables is None:
            N, D, r = self.A.shape
            ids = torch.arange(N * max(D, r), device=device)
            tables = self._rows[device] = (ids[: N * D].view(N, D), ids[: N * r].view(N, r))
        return tables
