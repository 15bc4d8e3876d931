"""Training-step and evaluation throughput of PERFT against the frozen base and the LoRA baselines.

The library side of scripts/bench.py (see it for usage). A *case* is the base model with one adapter
configuration; a step is forward, backward and an AdamW step over the case's trainable parameters, on
the LM loss (with `output_router_logits=True`, so the base router's aux loss is in it) plus R's
adapter aux loss. The `frozen` case trains nothing but makes the input embeddings' output require
grad, so its backward runs through every layer: the floor every adapter is compared with.

Timing: every case lives in one process, on one copy of the base weights (each case is a shallow copy
of the base model whose parameters are the base's own tensors), so every case sees the same weights
and the same routing. Cases are timed interleaved, in rounds: each round visits every case once, in
a shuffled order, with a `frozen` step before, between and after the visits. A case's ratio to
`frozen` is taken per round against the frozen steps on either side of its visit and summarised by
its median and quartiles over the rounds, so a slow stretch on a shared machine moves both sides of
a ratio. (Measured: the first step after switching cases is no slower than the next.)

Memory: each case runs in a fresh subprocess (so no other case's memory is in its peak): the base
is built, then the case trains two steps (three on CPU, see below). `peak_mem_mb` is the peak of
tensor memory above the base weights: adapter weights, optimizer state, gradients, activations and
workspace. On CUDA that is `torch.cuda.max_memory_allocated()` minus the memory allocated after the
build. On CPU torch has
no peak counter, so the third step runs under `torch.profiler` with `profile_memory=True` and the
peak is the largest running sum of its allocations and frees, plus what persists between steps
(trainable parameters and optimizer state): every tensor the step allocates is counted.
`total_mem_mb` adds the base weights. On Linux CPUs `rss_peak_mb` is the process's resident-set
high-water mark over the first two steps (VmHWM, reset after the build and after handing free heap
back to the OS): what the OS sees, allocator slack included; it moves by tens of MB between
identical runs, so the targets read `peak_mem_mb`.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import json
import math
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch import nn

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.model import adapter_aux_loss, apply_adapters, freeze, trainable_parameters
from perft_exp.config import cache_root, model_config


@dataclass(frozen=True)
class BenchModel:
    """An OLMoE-architecture model with random weights: conf/model/olmoe_1b_7b.yaml plus overrides."""

    name: str
    batch_size: int
    seq_len: int
    dtype: str
    overrides: dict = field(default_factory=dict)

    def config(self) -> transformers.OlmoeConfig:
        arch = model_config("olmoe_1b_7b").architecture
        return transformers.OlmoeConfig(**{**arch, **self.overrides})


BENCH_MODELS = {
    # The OLMoE block in miniature: 64 fine-grained experts, top-8, no top-k renormalisation.
    "olmoe_mini": BenchModel(
        "olmoe_mini",
        batch_size=8,
        seq_len=128,
        dtype="float32",
        overrides=dict(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=64,
            vocab_size=8000,
            max_position_embeddings=512,
            pad_token_id=1,
            eos_token_id=2,
        ),
    ),
    "olmoe_1b_7b": BenchModel("olmoe_1b_7b", batch_size=16, seq_len=256, dtype="bfloat16"),
}
# The same miniature with OLMoE-1B-7B's expert width to hidden size (1024 / 2048): olmoe_mini's experts are
# half as wide, which doubles the share of a rank-r PEFT expert in the block's arithmetic (E's most of all).
BENCH_MODELS["olmoe_mini_wide"] = BenchModel(
    "olmoe_mini_wide",
    batch_size=8,
    seq_len=128,
    dtype="float32",
    overrides={**BENCH_MODELS["olmoe_mini"].overrides, "intermediate_size": 128},
)
DEFAULT_MODEL = {"cpu": "olmoe_mini", "cuda": "olmoe_1b_7b"}

# PerftConfig fields per case (None: the frozen floor). Rank 16 unless the case sets a bottleneck, dropout 0
# so that the timings are the adapters' compute, not dropout's.
CASES: dict[str, dict | None] = {
    "frozen": None,
    "qv_lora": dict(variant="qv_lora"),
    "expert_lora": dict(variant="expert_lora"),
    "R_top2of4_r16": dict(variant="R", num_experts=4, top_k=2),
    "R_top2of8_r16": dict(variant="R", num_experts=8, top_k=2),
    "E_r16": dict(variant="E", num_experts=None, top_k=None),
    "D4_r16": dict(variant="D", num_experts=4),
    "S_r16": dict(variant="S", num_experts=None),
    "R_loop": dict(variant="R", num_experts=4, top_k=2, impl="loop"),
    "E_loop": dict(variant="E", num_experts=None, top_k=None, impl="loop"),
    # E beside the block (its own sort, gathers and sums), against E_r16 inside the frozen experts.
    "E_beside_r16": dict(variant="E", num_experts=None, top_k=None, impl="grouped"),
    # E inside the frozen experts at every call, decode steps included (auto runs it beside them there).
    "E_fused_r16": dict(variant="E", num_experts=None, top_k=None, impl="fused"),
    # Rank 1, auto's path: the adapters' arithmetic and weights all but gone, so what such a case costs over
    # frozen is the part of its variant's cost that no rank removes (hooks, routing, kernel calls).
    "R_top2of4_r1": dict(variant="R", num_experts=4, top_k=2, bottleneck=1),
    "E_r1": dict(variant="E", num_experts=None, top_k=None, bottleneck=1),
    "S_r1": dict(variant="S", num_experts=None, bottleneck=1),
    # A routing kind beyond the paper (docs/extending.md): R whose tokens take the fewest of their top 2 of 4
    # experts whose probabilities reach 0.5.
    "R_top_p_r16": dict(variant="R", num_experts=4, top_k=2, top_p=0.5),
}
# Run only when named with --cases: comparisons of one variant's compute paths or ranks, or of a routing
# kind beyond the paper, not a variant.
OPT_IN_CASES = ("E_beside_r16", "E_fused_r16", "R_top2of4_r1", "E_r1", "S_r1", "R_top_p_r16")


def build_base(model: BenchModel, device: str, seed: int = 0) -> nn.Module:
    """The base model with random weights, in train mode, experts computed by grouped matmuls."""
    torch.manual_seed(seed)
    with torch.device(device):
        base = transformers.AutoModelForCausalLM.from_config(
            model.config(), dtype=getattr(torch, model.dtype), experts_implementation="grouped_mm"
        )
    assert base.config._experts_implementation == "grouped_mm", base.config._experts_implementation
    for name, p in base.named_parameters():
        assert torch.isfinite(p).all(), f"{name} was left uninitialised"
    return base.train()


def build_4bit_base(model: BenchModel, device: str, seed: int = 0) -> nn.Module:
    """`build_base`'s model (the same random weights), saved and loaded back in 4 bits through
    `from_pretrained`, as train.py loads `model.quantization=4bit`: NF4 with double quantisation for the
    Linear layers and the fused experts (perft_exp/models/quantization.py), dequantised to the model's
    dtype."""
    import tempfile

    from perft_exp.models.quantization import MoEBitsAndBytesConfig

    base = build_base(model, "cpu", seed)
    dtype = getattr(torch, model.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        del base
        quantized = transformers.AutoModelForCausalLM.from_pretrained(
            tmp,
            dtype=dtype,
            quantization_config=MoEBitsAndBytesConfig(bnb_4bit_compute_dtype=dtype),
            experts_implementation="grouped_mm",
            device_map={"": device},
        )
    return quantized.train()


def checkpoint(base: nn.Module) -> nn.Module:
    """Gradient checkpointing on every decoder layer, as train.py turns it on (non-reentrant)."""
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def expert_bytes(model: nn.Module) -> dict[str, float]:
    """The fused experts' bytes as held (4-bit: packed data and scales) against the same tensors in bf16."""
    from perft_exp.models.quantization import expert_tensors, is_quantized_expert, quant_state_bytes

    held = bf16 = 0
    for _, module, attr in expert_tensors(model):
        if is_quantized_expert(module, attr):
            chain = module.parametrizations[attr]
            numel = math.prod(chain[0].quant_state.shape)
            held += chain.original.numel() + quant_state_bytes(chain[0].quant_state)
        else:
            numel = getattr(module, attr).numel()
            held += numel * getattr(module, attr).element_size()
        bf16 += 2 * numel
    return {"experts_mb": held / 2**20, "experts_bf16_mb": bf16 / 2**20, "experts_vs_bf16": held / bf16}


def make_batch(model: BenchModel, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(model.config().vocab_size, (model.batch_size, model.seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _share_weights(base: nn.Module) -> nn.Module:
    """A copy of `base` whose modules are new but whose parameters are the base's own tensors."""
    return copy.deepcopy(base, memo={id(p): p for p in base.parameters()})


def attach(base: nn.Module, name: str, adapter_dtype: str = "float32") -> nn.Module:
    """Case `name` on a weight-sharing copy of `base`: a PEFT model, or (frozen) the copy with every
    parameter frozen."""
    spec = CASES[name]
    model = _share_weights(base)
    if spec is None:
        freeze(model)
        return model
    return apply_adapters(
        model, PerftConfig(**{"bottleneck": 16, "dropout": 0.0, "adapter_dtype": adapter_dtype, **spec})
    )


class Case:
    """One adapter configuration on (a weight-sharing copy of) the base model, ready to train."""

    def __init__(
        self, name: str, base: nn.Module, adapter_dtype: str = "float32", spec: str | None = None
    ) -> None:
        """`spec`: the CASES entry to build when it is not `name` (frozen_full: the frozen case on the
        full-precision base)."""
        self.name, key = name, spec or name
        model = attach(base, key, adapter_dtype)
        if CASES[key] is None:
            model.enable_input_require_grads()  # backward through every layer, no parameter gradient
            self.aux_coef = 0.0
        else:
            self.aux_coef = model.perft_config.aux_loss_coef  # resolved: the architecture's unless set
        self.model = model.train()
        self.forward = self.model
        params = list(trainable_parameters(model).values())
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0) if params else None

    def compile(self, batch: dict[str, torch.Tensor]) -> None:
        """From now on the forward (and so the backward) runs through torch.compile. One eager step first:
        transformers installs its output-capturing hooks on the first forward, outside compiled code."""
        self.step(batch)
        self.forward = torch.compile(self.model)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        out = self.forward(**batch, labels=batch["input_ids"], output_router_logits=True, use_cache=False)
        loss = out.loss  # LM loss + the base router's aux loss
        aux = adapter_aux_loss(self.model, batch["attention_mask"])
        if aux is not None:
            loss = loss + self.aux_coef * aux
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed_step(case: Case, batch: dict[str, torch.Tensor], device: str) -> dict[str, float]:
    """Seconds of one step: wall clock and process CPU time (all threads)."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    case.step(batch)
    _sync(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def _interleaved_rounds(
    names: list[str],
    visit: Callable[[str], tuple[float, ...]],
    rounds: int,
    seed: int,
    on_round: Callable[[int, dict[str, list[tuple[float, ...]]], dict[str, list[tuple[float, ...]]]], None]
    | None = None,
) -> tuple[dict[str, list[tuple[float, ...]]], dict[str, list[tuple[float, ...]]]]:
    """Rounds of visits F c1 F c2 ... F cn F: `frozen` before, between and after the other cases, which come
    in a shuffled order each round. `visit(name)` measures a case once (a tuple of seconds: a step; a prefill
    and a decode step). Returns every visit per case and, per other case and round, each measurement over the
    mean of the two frozen visits around it: a drift in the machine's speed cancels. `on_round(r, visits,
    ratios)` after each round (progress lines)."""
    rng = random.Random(seed)
    others = [name for name in names if name != "frozen"]
    visits: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
    ratios: dict[str, list[tuple[float, ...]]] = {name: [] for name in others}
    for r in range(rounds):
        rng.shuffle(others)
        before = visit("frozen")
        visits["frozen"].append(before)
        for name in others:
            seconds, after = visit(name), visit("frozen")
            visits[name].append(seconds)
            visits["frozen"].append(after)
            ratios[name].append(tuple(x / ((b + a) / 2) for x, b, a in zip(seconds, before, after)))
            before = after
        if on_round is not None:
            on_round(r, visits, ratios)
    return visits, ratios


def time_cases(
    cases: dict[str, Case],
    batch: dict[str, torch.Tensor],
    device: str,
    *,
    rounds: int,
    steps: int,
    warmup: int,
    clock: str,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Per case: median step time, tokens/s and the per-round ratio to `frozen` (median and quartiles).

    A round visits the other cases in a shuffled order with one frozen step before, between and after
    them (F c1 F c2 ... F cn F); a case's ratio in the round is its median step over the mean of the
    two frozen steps around it, so a drift in the machine's speed cancels.
    """
    assert "frozen" in cases, "the ratios need the frozen case"
    for name, case in cases.items():
        start = time.perf_counter()
        for _ in range(warmup):
            case.step(batch)
        log(f"  warm-up {name:14s} {(time.perf_counter() - start) / max(warmup, 1) * 1e3:8.1f} ms/step")
    times: dict[str, list[dict[str, float]]] = {name: [] for name in cases}  # every timed step

    def visit(name: str) -> tuple[float]:
        timed = [_timed_step(cases[name], batch, device) for _ in range(1 if name == "frozen" else steps)]
        times[name] += timed
        return (statistics.median(t[clock] for t in timed),)

    def on_round(r: int, visits: dict, ratios: dict[str, list[tuple[float, ...]]]) -> None:
        worst = max(ratios, key=lambda n: ratios[n][-1][0])
        frozen_ms = statistics.median(v[0] for v in visits["frozen"][-len(ratios) - 1 :]) * 1e3
        log(
            f"  round {r + 1:2d}/{rounds}: frozen {frozen_ms:7.1f} ms, "
            f"slowest {worst} {ratios[worst][-1][0]:.2f}x"
        )

    _, per_round = _interleaved_rounds(list(cases), visit, rounds, seed, on_round)
    ratios = {name: [r[0] for r in rs] for name, rs in per_round.items()}
    tokens = batch["input_ids"].numel()
    results = {}
    for name in cases:
        q1, med, q3 = _quartiles(ratios[name]) if name != "frozen" else (1.0, 1.0, 1.0)
        step = {k: statistics.median(t[k] for t in times[name]) for k in ("wall", "cpu")}
        results[name] = {
            "step_ms": step[clock] * 1e3,
            "wall_ms": step["wall"] * 1e3,
            "cpu_ms": step["cpu"] * 1e3,
            "tokens_per_s": tokens / step[clock],
            "ratio_vs_frozen": med,
            "ratio_q1": q1,
            "ratio_q3": q3,
            "ratio_spread": q3 - q1,  # interquartile range of the per-round ratios
            "ratio_min": min(ratios.get(name, [1.0])),
            "ratio_max": max(ratios.get(name, [1.0])),
            "timed_steps": len(times[name]),
        }
    return results


# ---------------------------------------------------------------------------------------------
# Where a case's extra time goes: its training step under torch.profiler, op by op, against a baseline

# The ops that multiply matrices (self time only, so a matmul's dispatch to mm is not counted twice). On CPU
# `_grouped_mm`'s own time is its per-expert bookkeeping, its products being `mm` calls of their own.
MATMUL_OPS = frozenset(
    {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_grouped_mm", "aten::addbmm"}
)


def profile_steps(
    cases: dict[str, Case],
    batch: dict[str, torch.Tensor],
    device: str,
    *,
    visits: int = 3,
    steps: int = 3,
) -> dict[str, dict[str, float]]:
    """Each case's training step as self time per op, ms a step: {case: {op: ms}} (CPU time on CPU; on CUDA
    the device time of the kernels each op launched). The cases are visited `visits` times in turn (the order
    reversed every other visit), `steps` steps under `torch.profiler` a visit, and each op's time is its
    median over the visits: an op that one visit caught in a slow stretch of a shared machine does not move
    the comparison."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    names = list(cases)
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for visit in range(visits):
        for name in names if visit % 2 == 0 else names[::-1]:
            _sync(device)
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    cases[name].step(batch)
                _sync(device)
            ops: dict[str, float] = {}
            for event in prof.key_averages():
                # On CUDA an op's self device time is the kernels it launched, which are listed again as
                # events of their own: only the ops are counted.
                if cuda and event.device_type != torch.autograd.DeviceType.CPU:
                    continue
                us = event.self_device_time_total if cuda else event.self_cpu_time_total
                if us > 0:
                    ops[event.key] = us / steps / 1e3
            seen[name].append(ops)
    return {
        name: {
            op: statistics.median(ops.get(op, 0.0) for ops in runs)
            for op in sorted({op for ops in runs for op in ops})
        }
        for name, runs in seen.items()
    }


def profile_difference(
    profiles: dict[str, dict[str, float]], case: str, baseline: str, top: int = 12
) -> dict:
    """What `case`'s step spends over `baseline`'s, by op (`profile_steps`' output): the totals, the part in
    matrix multiplies (MATMUL_OPS) and the `top` ops by the size of their difference, either sign."""
    a, b = profiles[case], profiles[baseline]
    rows = [
        {
            "op": op,
            "case_ms": a.get(op, 0.0),
            "baseline_ms": b.get(op, 0.0),
            "extra_ms": a.get(op, 0.0) - b.get(op, 0.0),
        }
        for op in sorted(set(a) | set(b))
    ]
    rows.sort(key=lambda row: -abs(row["extra_ms"]))
    case_ms, baseline_ms = sum(a.values()), sum(b.values())
    return {
        "case": case,
        "baseline": baseline,
        "case_ms": case_ms,
        "baseline_ms": baseline_ms,
        "extra_ms": case_ms - baseline_ms,
        "matmul_extra_ms": sum(row["extra_ms"] for row in rows if row["op"] in MATMUL_OPS),
        "ops": rows[:top],
    }


# ---------------------------------------------------------------------------------------------
# Generation: prefill and decode with the KV cache, against the frozen model

GENERATION_CASES = (
    "frozen",
    "R_top2of4_r16",
    "E_r16",
    "D4_r16",
    "S_r16",
    "E_fused_r16",
    "R_top2of4_r1",
    "E_r1",
    "S_r1",
    "R_top_p_r16",
)
# Batch sizes per device: one sequence, and a batch sized to the device (on a GPU a batch of 16 leaves most of
# the chip idle).
GENERATION_BATCH_SIZES = {"cpu": (1, 16), "cuda": (1, 64)}


@dataclass(frozen=True)
class GenerationShape:
    """Greedy `generate()`: `prompt_len` prompt tokens, then `new_tokens` more, at each batch size.
    `compiled`: with a static KV cache, whose decode steps generate() runs compiled (`compile_kwargs`)."""

    prompt_len: int = 32
    new_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1, 16)
    compiled: bool = False


def compile_kwargs(device: str) -> dict:
    """`generate()` arguments for compiled decoding: a static KV cache, which transformers' generate compiles
    the decode step over. On a GPU its default, mode "reduce-overhead" (CUDA graphs: one launch a step);
    elsewhere generate compiles only when asked to (`_compile_all_devices`), mode "default"."""
    from transformers.generation import CompileConfig

    if device.startswith("cuda"):
        return {"cache_implementation": "static", "compile_config": CompileConfig()}
    config = CompileConfig(mode="default")
    config._compile_all_devices = True  # transformers' switch for compiling off GPUs
    return {"cache_implementation": "static", "compile_config": config}


def _generate_seconds(
    model: nn.Module, ids: torch.Tensor, new_tokens: int, device: str, clock: str, compiled: bool = False
) -> float:
    """Seconds (clock: "cpu" process time or "wall") of one greedy generate of exactly `new_tokens` tokens;
    `compiled`: with `compile_kwargs`."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    extra = compile_kwargs(device) if compiled else {}
    _sync(device)
    start = timer()
    with torch.no_grad():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # no early end on a random model's EOS: every case decodes as many
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
            **extra,
        )
    _sync(device)
    return timer() - start


def _generation_visit(model, ids, shape: GenerationShape, device: str, clock: str) -> tuple[float, float]:
    """(prefill seconds, decode seconds per step): a generate of one token is the prefill (and one
    sampling); one of 1 + new_tokens adds new_tokens decode steps."""
    prefill = _generate_seconds(model, ids, 1, device, clock, shape.compiled)
    full = _generate_seconds(model, ids, 1 + shape.new_tokens, device, clock, shape.compiled)
    return prefill, (full - prefill) / shape.new_tokens


def time_generation(
    models: dict[str, nn.Module],
    vocab_size: int,
    device: str,
    shape: GenerationShape,
    *,
    rounds: int,
    clock: str,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Per batch size and case: prefill ms, decode ms per step, decode tokens/s, and the per-round ratio of
    the decode step (and of the prefill) to `frozen`'s, median and quartiles.

    Rounds interleave as the training steps do (time_cases): F c1 F c2 ... F cn F in a shuffled order, each
    case against the mean of the frozen visits on either side."""
    assert "frozen" in models, "the ratios need the frozen model"
    results: dict[str, dict] = {}
    for batch_size in shape.batch_sizes:
        g = torch.Generator().manual_seed(seed + batch_size)
        ids = torch.randint(vocab_size, (batch_size, shape.prompt_len), generator=g).to(device)
        if shape.compiled:  # each batch size compiles afresh, every case at static shapes (the models share
            # one code object, and dynamo's recompile limit counts per code object)
            torch._dynamo.reset()
        for model in models.values():  # warm-up: allocator, thread pool, first-call hooks; compiled: the
            # compile, at the timed runs' cache length
            warm = 1 + shape.new_tokens if shape.compiled else 2
            _generate_seconds(model, ids, warm, device, clock, shape.compiled)

        def visit(name: str, ids: torch.Tensor = ids) -> tuple[float, float]:
            return _generation_visit(models[name], ids, shape, device, clock)

        def on_round(r: int, visits: dict, per_round: dict, batch_size: int = batch_size) -> None:
            worst = max(per_round, key=lambda n: per_round[n][-1][1])
            log(
                f"  batch {batch_size:3d} round {r + 1:2d}/{rounds}: frozen decode "
                f"{visits['frozen'][-1][1] * 1e3:6.2f} ms/step, slowest {worst} "
                f"{per_round[worst][-1][1]:.3f}x"
            )

        visits, per_round = _interleaved_rounds(list(models), visit, rounds, seed, on_round)
        ratios = {
            name: {"prefill": [r[0] for r in rs], "decode": [r[1] for r in rs]}
            for name, rs in per_round.items()
        }
        for name in models:
            prefill = statistics.median(v[0] for v in visits[name])
            decode = statistics.median(v[1] for v in visits[name])
            row = {
                "batch_size": batch_size,
                "prefill_ms": prefill * 1e3,
                "decode_ms_per_step": decode * 1e3,
                "decode_tokens_per_s": batch_size / decode,
            }
            for part in ("decode", "prefill"):
                q1, med, q3 = _quartiles(ratios[name][part]) if name != "frozen" else (1.0, 1.0, 1.0)
                row |= {f"{part}_vs_frozen": med, f"{part}_q1": q1, f"{part}_q3": q3}
            results[f"{name}@{batch_size}"] = row
    return results


# E's paths that decode_parts times one by one (grouped where grouped_mm takes the inputs).
E_DECODE_PATHS = ("select", "gather", "grouped", "dense")


def decode_parts(
    base: nn.Module,
    device: str,
    adapter_dtype: str = "float32",
    token_counts: tuple[int, ...] = (1, 16),
    reps: int = 40,
    seed: int = 0,
) -> dict[str, dict]:
    """One MoE block at a decode step: what E adds against what it sits beside. The frozen experts' forward
    (`experts(x, top_k_index, top_k_weights)`) and E's PEFT experts on the same routed pairs
    (`forward_routed` on each of E_DECODE_PATHS forced: `E_<path>` rows; `E_adapters`: the path `auto` takes
    for that many tokens), each timed alone, median of `reps`, no grad: warm (the call repeated, everything it
    touches in cache) and cold (after reading a buffer larger than the CPU's caches, as a decode step finds a
    layer after the other layers ran: its weights, and the state of every op it calls, come from memory). With
    the weights each touches (the experts the step routes to). `base`: a model `build_base` built (its first
    MoE block is timed; E attaches to a copy)."""
    from perft_exp.adapters.experts import PeftExperts, grouped_mm_supported

    peft = attach(base, "E_r16", adapter_dtype).eval()
    block = base.model.layers[0].mlp
    experts = block.experts
    adapters = next(m for m in peft.modules() if isinstance(m, PeftExperts))
    flush = torch.ones(32 * 2**20, device=device)  # 128 MB, past any last-level cache here; read, not written
    g = torch.Generator().manual_seed(seed)
    results: dict[str, dict] = {}
    for tokens in token_counts:
        x = torch.randn(tokens, base.config.hidden_size, generator=g).to(device, base.dtype)
        with torch.no_grad():
            _, weights, index = block.gate(x)
        touched = index.unique().numel()
        xa = x.to(adapters.A.dtype)
        calls = {"frozen_experts": functools.partial(experts, x, index, weights)}
        # Every path E can take, forced: the cost model behind auto was measured on CPU, and these rows are
        # what a device's own thresholds would be set from. Auto's pick is one of them, timed once.
        paths = [p for p in E_DECODE_PATHS if p != "grouped" or grouped_mm_supported(xa, adapters.A)]
        for path in paths:
            calls[f"E_{path}"] = functools.partial(adapters.forward_routed, xa, weights, index, impl=path)
        auto = adapters.path("auto", xa, index.shape[-1])
        row: dict = {
            "tokens": tokens,
            "pairs": index.numel(),
            "experts_touched": touched,
            "E_auto_path": auto,
        }
        for name, call in calls.items():
            for cold in (False, True):
                times = []
                with torch.no_grad():
                    call()
                    for _ in range(reps):
                        if cold:
                            flush.sum()
                        _sync(device)
                        start = time.perf_counter()
                        call()
                        _sync(device)
                        times.append(time.perf_counter() - start)
                row[f"{name}_{'cold' if cold else 'warm'}_us"] = statistics.median(times) * 1e6
        for clock in ("warm", "cold"):  # E's PEFT experts as the model runs them: auto's path
            row[f"E_adapters_{clock}_us"] = row[f"E_{auto}_{clock}_us"]
        per_expert = sum(getattr(experts, a)[0].nbytes for a in ("gate_up_proj", "down_proj"))
        row["frozen_experts_mb"] = touched * per_expert / 2**20
        row["E_adapters_mb"] = touched * (adapters.A[0].nbytes + adapters.B[0].nbytes) / 2**20
        for clock in ("warm", "cold"):
            row[f"{clock}_ratio"] = row[f"E_adapters_{clock}_us"] / row[f"frozen_experts_{clock}_us"]
        row["bytes_ratio"] = row["E_adapters_mb"] / row["frozen_experts_mb"]
        results[str(tokens)] = row
    return results


# ---------------------------------------------------------------------------------------------
# Memory (one fresh subprocess per case)


def _proc_status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) / 1024  # kB
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_rss_peak() -> float | None:
    """Hand free heap back to the OS (glibc), reset VmHWM to the current RSS; RSS in MB (None: not Linux)."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return None
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the baseline may hold free heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    clear_refs.write_text("5")
    return _proc_status_mb("VmRSS")


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _step_peak_bytes(step: Callable[[], None]) -> int:
    """Peak, over one step, of the bytes allocated minus freed by the CPU allocator since the step began."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def memory_of_case(
    model: BenchModel,
    case: str,
    device: str,
    adapter_dtype: str,
    quantization: str = "none",
    checkpointing: bool = False,
) -> dict:
    """Runs in the subprocess: build the base (4bit: loaded back in 4 bits; `checkpointing`: with gradient
    checkpointing), train two steps (CPU: and a profiled third); MB."""
    from perft_exp.models.quantization import weight_bytes

    base = build_4bit_base(model, device) if quantization == "4bit" else build_base(model, device)
    if checkpointing:
        checkpoint(base)
    batch = make_batch(model, device)
    weights = weight_bytes(base) / 2**20
    if device.startswith("cuda"):
        built = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        built_rss = _reset_rss_peak()
    runner = Case(case, base, adapter_dtype)
    runner.step(batch)  # creates the optimizer state
    runner.step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - built) / 2**20
        return {"peak_mem_mb": peak, "total_mem_mb": peak + weights, "base_weights_mb": weights}
    rss = None if built_rss is None else _proc_status_mb("VmHWM") - built_rss  # before the profiler's buffers
    state = [t for s in (runner.optimizer.state.values() if runner.optimizer else ()) for t in s.values()]
    persistent = _tensor_bytes(trainable_parameters(runner.model).values()) + _tensor_bytes(state)
    peak = (persistent + _step_peak_bytes(lambda: runner.step(batch))) / 2**20
    result = {"peak_mem_mb": peak, "total_mem_mb": peak + weights, "base_weights_mb": weights}
    return result if rss is None else {**result, "rss_peak_mb": rss}


def measure_memory(
    model: BenchModel,
    case: str,
    device: str,
    threads: int,
    adapter_dtype: str,
    quantization: str = "none",
    checkpointing: bool = False,
) -> dict:
    """`memory_of_case` in a fresh Python process, so that no other case's memory is in the peak."""
    cmd = [
        sys.executable,
        "-m",
        __name__,
        "--model",
        model.name,
        "--case",
        case,
        "--device",
        device,
        "--threads",
        str(threads),
        "--adapter-dtype",
        adapter_dtype,
        "--quantization",
        quantization,
        *(["--gradient-checkpointing"] if checkpointing else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess for {case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Evaluation throughput


def eval_throughput(
    device: str,
    batch_sizes: tuple[int, ...] = (1, 8, 16),
    mode: str = "paper",
    n_per_set: int = 16,
    log: Callable[[str], None] = print,
) -> dict:
    """Questions/s of `perft_exp.evaluation.evaluate` on the tiny model and the synthetic commonsense sets.

    Every batch size answers the same questions, after one untimed warm-up call.
    """
    from perft_exp.data.formats import COMMONSENSE_TEST_SETS, load_test_sets
    from perft_exp.data.synthetic import ensure_suite
    from perft_exp.evaluation import evaluate
    from perft_exp.models.tiny import ensure_tiny_model

    log("  tiny model (built on first use) ...")
    path = ensure_tiny_model("tiny_olmoe")
    root = ensure_suite("commonsense", cache_root() / "data" / "synthetic_commonsense")
    sets = {
        name: recs[:n_per_set] for name, recs in load_test_sets(root, list(COMMONSENSE_TEST_SETS)).items()
    }
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).to(device)
    warm = dict([next(iter(sets.items()))])
    evaluate(model, tokenizer, warm, mode=mode, batch_size=max(batch_sizes), progress=False)
    speeds = {}
    for bs in batch_sizes:
        speeds[bs] = evaluate(model, tokenizer, sets, mode=mode, batch_size=bs, progress=False)[
            "questions_per_s"
        ]
        log(f"  eval batch size {bs:3d}: {speeds[bs]:8.2f} questions/s")
    result = {
        "model": "tiny_olmoe",
        "mode": mode,
        "questions": sum(map(len, sets.values())),
        "questions_per_s": speeds,
    }
    if 1 in speeds and 16 in speeds:
        result["speedup_bs16_vs_bs1"] = speeds[16] / speeds[1]
    return result


def _memory_main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="one case's peak memory (used by scripts/bench.py)")
    parser.add_argument("--model", required=True, choices=sorted(BENCH_MODELS))
    parser.add_argument("--case", required=True, choices=list(CASES))  # on the full or the 4-bit base
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adapter-dtype", default="float32")
    parser.add_argument("--quantization", default="none", choices=["none", "4bit"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = BENCH_MODELS[args.model]
    result = memory_of_case(
        model, args.case, args.device, args.adapter_dtype, args.quantization, args.gradient_checkpointing
    )
    print(json.dumps(result))


if __name__ == "__main__":
    _memory_main()
