"""Benchmark a full training step of PERFT (R, E, D, S), the LoRA baselines and the frozen floor.

    python scripts/bench.py                              # CPU: OLMoE in miniature, about 5 min on 2 cores
    python scripts/bench.py --quick                      # smoke run: 2 rounds, no memory subprocesses
    python scripts/bench.py --eval --json outputs/bench/cpu.json   # + evaluation throughput, write JSON
    python scripts/bench.py --generate --no-memory       # + generation: prefill and decode at batch 1 and 16
    python scripts/bench.py --compile --no-memory        # + the torch.compile'd steps against compiled frozen
    python scripts/bench.py --model olmoe_mini_wide      # the miniature, OLMoE's expert width to hidden size
    python scripts/bench.py --device cuda                # OLMoE-1B-7B architecture, bf16, random weights
    python scripts/bench.py --base 4bit                  # the cases over the base loaded in 4 bits
    python scripts/bench.py --cases E_r16 S_r16 --profile S_r16 --no-memory   # where E's extra time goes

Prints a markdown table: step time, tokens/s, the per-round ratio to `frozen` (median [quartiles]),
and peak memory; with --generate a second one: greedy generate() with the KV cache (32 prompt tokens, 32
new), prefill and per-step decode time and their ratios to the frozen model, then (with E among the cases)
one MoE block's frozen experts against E's PEFT experts at a decode step, warm and cold; with --compile: every
case's step under torch.compile against the compiled frozen step (and with --generate, generation again with a
static KV cache and compiled decode steps: CUDA graphs on a GPU); with --profile [BASELINE]: each case's
training step under torch.profiler, the ops it spends more (or less) time on than BASELINE's (default frozen)
and how much of that is matrix multiplies. Then the performance targets, PASS or FAIL. How cases are timed
and how memory is measured: perft_exp/bench.py.

On CPU the default clock is process CPU time with one torch thread: on a shared machine a 2-thread
OpenMP region stalls whenever either core is taken (single steps ran 10-30x slower), while one
thread's CPU time counts only the work done. `--threads 2 --clock wall` measures the other way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from perft_exp.optional_imports import hide_unused

# The bench never runs DeepSpeed and quantises only with --base 4bit: what it does not use is hidden before
# transformers loads, so their import-time warnings stay out of the output (perft_exp/optional_imports.py).
_QUANTIZES = "4bit" in sys.argv[sys.argv.index("--base") + 1 :][:1] if "--base" in sys.argv else False
hide_unused([SimpleNamespace(model=SimpleNamespace(quantization="4bit" if _QUANTIZES else "none"))])
from perft_exp import bench  # noqa: E402

# --base 4bit: the frozen base loaded in 4 bits; the cases train on it, `frozen` is the 4-bit frozen step and
# `frozen_full` the full-precision one (the same weights before quantisation).
QUANT_CASES = ("qv_lora", "R_top2of4_r16", "E_r16", "D4_r16", "S_r16")
QUANT_TARGETS = {"R_top2of4_r16": 1.10}  # on the 4-bit base, against the 4-bit frozen step
EXPERT_BYTES_TARGET = 0.30  # the experts' bytes in 4 bits against bf16
# The performance targets (CPU, all read from one run).
STEP_TARGETS = {"R_top2of4_r16": 1.05, "E_r16": 1.06, "D4_r16": 1.05, "S_r16": 1.05}
DECODE_TARGETS = {1: 1.10, 16: 1.05}  # batch size -> a decode step's time at most this x frozen's
LOOP_SHARE = 1 / 3  # batched E adds at most this share of what E_loop adds over frozen
MEMORY_SLACK = 0.10  # every PERFT case's peak memory within 10% of frozen
PERFT_CASES = ("R_top2of4_r16", "R_top2of8_r16", "E_r16", "D4_r16", "S_r16")
# A variant at rank 16 and the same variant at rank 1 (opt-in cases): their difference is what the rank costs.
RANK_PAIRS = {"R_top2of4_r16": "R_top2of4_r1", "E_r16": "E_r1", "S_r16": "S_r1"}


def machine(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch thread(s), torch {torch.__version__}"


def _at_most(target: str, ratio: float, limit: float) -> dict:
    """A target of the form `ratio <= limit`: what it asks, the measured ratio, whether it passes."""
    return {"target": target, "value": f"{ratio:.3f}x", "pass": ratio <= limit}


def check_targets(
    cases: dict[str, dict],
    generation: dict[str, dict] | None = None,
    experts: dict | None = None,
    generation_compiled: dict[str, dict] | None = None,
) -> list[dict]:
    """Each target whose cases were run: what it asks, the measured value, and whether it passes.
    `experts` (--base 4bit): the experts' bytes; the step targets are then the 4-bit base's. The decode
    targets hold eager against the frozen model and compiled against the compiled frozen model."""
    checks = []
    for rows, kind in ((generation, ""), (generation_compiled, "compiled ")):
        for key, row in (rows or {}).items():
            limit = DECODE_TARGETS.get(row["batch_size"])
            if key.split("@")[0] not in ("frozen", *RANK_PAIRS.values()) and limit is not None:
                target = f"{key} {kind}decode step <= {limit:.2f}x {kind}frozen"
                checks.append(_at_most(target, row["decode_vs_frozen"], limit))
    if experts is not None:
        limit = EXPERT_BYTES_TARGET
        checks.append(
            _at_most(f"4-bit experts' bytes <= {limit:.2f}x bf16", experts["experts_vs_bf16"], limit)
        )
        for name, limit in QUANT_TARGETS.items():
            if name in cases:
                target = f"{name} on the 4-bit base <= {limit:.2f}x the 4-bit frozen step"
                checks.append(_at_most(target, cases[name]["ratio_vs_frozen"], limit))
        return checks
    for name, limit in STEP_TARGETS.items():
        if name in cases:
            checks.append(
                _at_most(f"{name} step <= {limit:.2f}x frozen", cases[name]["ratio_vs_frozen"], limit)
            )
    if "E_r16" in cases and "E_loop" in cases:
        added, loop_added = cases["E_r16"]["ratio_vs_frozen"] - 1, cases["E_loop"]["ratio_vs_frozen"] - 1
        share = f" ({added / loop_added:.0%})" if loop_added > 0 else ""
        checks.append(
            {
                "target": "E_r16 adds <= 1/3 of what E_loop adds over frozen",
                "value": f"{added:+.3f} vs {loop_added:+.3f}{share}",
                "pass": added <= LOOP_SHARE * loop_added,
            }
        )
    frozen_mem = cases.get("frozen", {}).get("peak_mem_mb")
    for name in PERFT_CASES:
        mem = cases.get(name, {}).get("peak_mem_mb")
        if frozen_mem and mem is not None:
            checks.append(
                {
                    "target": f"{name} peak memory <= {1 + MEMORY_SLACK:.2f}x frozen",
                    "value": f"{mem / frozen_mem:.3f}x",
                    "pass": mem <= (1 + MEMORY_SLACK) * frozen_mem,
                }
            )
    return checks


def format_generation(rows: dict[str, dict], clock: str) -> str:
    """The generation table: one row per case and batch size."""
    lines = [
        f"| case | batch | prefill ms ({clock}) | decode ms/step | decode tokens/s | decode vs frozen [IQR] "
        "| prefill vs frozen |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for key, g in rows.items():
        ratio = f"{g['decode_vs_frozen']:.3f} [{g['decode_q1']:.3f}-{g['decode_q3']:.3f}]"
        lines.append(
            f"| {key.split('@')[0]} | {g['batch_size']} | {g['prefill_ms']:.1f} | "
            f"{g['decode_ms_per_step']:.2f} | {g['decode_tokens_per_s']:.0f} | {ratio} | "
            f"{g['prefill_vs_frozen']:.3f} |"
        )
    return "\n".join(lines)


def format_decode_parts(rows: dict[str, dict]) -> str:
    """The decode-parts table: one MoE block's frozen experts against E's PEFT experts, warm and cold."""
    lines = [
        "| tokens | (token, expert) pairs | experts touched | frozen experts warm / cold us "
        "| E's PEFT experts warm / cold us | E / frozen warm | E / frozen cold | E / frozen weight bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['tokens']} | {r['pairs']} | {r['experts_touched']} | "
            f"{r['frozen_experts_warm_us']:.0f} / {r['frozen_experts_cold_us']:.0f} | "
            f"{r['E_adapters_warm_us']:.0f} / {r['E_adapters_cold_us']:.0f} | {r['warm_ratio']:.3f} | "
            f"{r['cold_ratio']:.3f} | {r['bytes_ratio']:.3f} |"
        )
    paths = [p for p in bench.E_DECODE_PATHS if any(f"E_{p}_warm_us" in r for r in rows.values())]
    if paths:
        lines += [
            "",
            "E's PEFT experts by path, forced (warm / cold us; * the path auto takes):",
            "",
            "| tokens | " + " | ".join(paths) + " |",
            "|---:|" + "---:|" * len(paths),
        ]
        for r in rows.values():
            cells = [
                f"{r[f'E_{p}_warm_us']:.0f} / {r[f'E_{p}_cold_us']:.0f}{' *' * (r['E_auto_path'] == p)}"
                if f"E_{p}_warm_us" in r
                else "-"
                for p in paths
            ]
            lines.append(f"| {r['tokens']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rank_split(cases: dict[str, dict], generation: dict[str, dict] | None) -> list[dict]:
    """Per RANK_PAIRS pair run, for the training step and each decode batch size: both ratios to frozen and
    their difference, what the rank costs in frozen steps. Rank 1's own ratio is the part of the variant's
    cost that no rank removes (hooks, routing, kernel calls)."""
    rows = []
    for r16, r1 in RANK_PAIRS.items():
        where = []
        if r16 in cases and r1 in cases:
            where.append(("training step", cases[r16]["ratio_vs_frozen"], cases[r1]["ratio_vs_frozen"]))
        for key, row in (generation or {}).items():
            name, _, batch = key.partition("@")
            if name == r16 and f"{r1}@{batch}" in generation:
                ratio_r1 = generation[f"{r1}@{batch}"]["decode_vs_frozen"]
                where.append((f"decode, batch {batch}", row["decode_vs_frozen"], ratio_r1))
        rows += [
            {"case": r16, "where": label, "r16": ratio, "r1": ratio_r1, "rank_cost": ratio - ratio_r1}
            for label, ratio, ratio_r1 in where
        ]
    return rows


def format_rank_split(rows: list[dict]) -> str:
    """The rank-split table (rank_split)."""
    lines = [
        "| case | where | rank 16 vs frozen | rank 1 vs frozen | rank 16 - rank 1 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['where']} | {r['r16']:.3f} | {r['r1']:.3f} | {r['rank_cost']:+.3f} |"
        )
    return "\n".join(lines)


def format_profile(diff: dict) -> str:
    """One case's profile against its baseline (bench.profile_difference): a summary line, then its ops."""
    lines = [
        f"{diff['case']} over {diff['baseline']}: {diff['extra_ms']:+.1f} ms a step under the profiler "
        f"({diff['case_ms']:.1f} against {diff['baseline_ms']:.1f}), of which matrix multiplies "
        f"{diff['matmul_extra_ms']:+.1f} ms",
        "",
        f"| op | {diff['case']} ms | {diff['baseline']} ms | difference ms |",
        "|---|---:|---:|---:|",
    ]
    for row in diff["ops"]:
        lines.append(
            f"| {row['op']} | {row['case_ms']:.2f} | {row['baseline_ms']:.2f} | {row['extra_ms']:+.2f} |"
        )
    return "\n".join(lines)


def format_compiled(rows: dict[str, dict], clock: str) -> str:
    """The compiled-step table: each case's compiled step against the compiled frozen step."""
    lines = [f"| case (compiled) | step ms ({clock}) | ratio vs compiled frozen [IQR] |", "|---|---:|---|"]
    for name, c in rows.items():
        lines.append(
            f"| {name} | {c['step_ms']:.1f} | {c['ratio_vs_frozen']:.3f} "
            f"[{c['ratio_q1']:.3f}-{c['ratio_q3']:.3f}] |"
        )
    return "\n".join(lines)


def format_table(result: dict) -> str:
    lines = [
        f"| case | step ms ({result['clock']}) | wall ms | tokens/s | ratio vs frozen [IQR] | peak MB "
        "| mem vs frozen | RSS MB |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    frozen_mem = result["cases"]["frozen"].get("peak_mem_mb")
    for name, c in result["cases"].items():
        mem, rss = c.get("peak_mem_mb"), c.get("rss_peak_mb")
        mem_cols = f"{mem:.1f} | {mem / frozen_mem:.3f}x" if mem is not None and frozen_mem else "- | -"
        lines.append(
            f"| {name} | {c['step_ms']:.1f} | {c['wall_ms']:.1f} | {c['tokens_per_s']:.0f} | "
            f"{c['ratio_vs_frozen']:.3f} [{c['ratio_q1']:.3f}-{c['ratio_q3']:.3f}] | {mem_cols} | "
            f"{'-' if rss is None else f'{rss:.0f}'} |"
        )
    ev = result.get("eval_throughput")
    if ev and "questions_per_s" in ev:
        lines += [
            "",
            f"Evaluation throughput ({ev['model']}, mode={ev['mode']}, {ev['questions']} questions):",
            "",
            "| eval batch size | questions/s |",
            "|---:|---:|",
        ]
        lines += [f"| {bs} | {qps:.2f} |" for bs, qps in ev["questions_per_s"].items()]
        if "speedup_bs16_vs_bs1" in ev:
            lines.append(f"| bs16 / bs1 | {ev['speedup_bs16_vs_bs1']:.2f}x |")
    elif ev:
        lines += ["", f"Evaluation throughput: skipped ({ev['skipped']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", choices=sorted(bench.BENCH_MODELS), help="default: olmoe_mini on CPU, olmoe_1b_7b on CUDA"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 1 warm-up step, no memory")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--cases", nargs="+", choices=list(bench.CASES), help="subset (frozen is always added)"
    )
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved rounds (timed steps = rounds x steps)"
    )
    parser.add_argument("--steps", type=int, default=1, help="timed steps per case per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case before the rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for the whole run)")
    parser.add_argument("--clock", choices=["cpu", "wall"], help="default: cpu on CPU, wall on CUDA")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    parser.add_argument("--eval", action="store_true", help="add evaluation throughput at batch size 1/8/16")
    parser.add_argument("--eval-mode", default="paper", choices=["paper", "greedy", "score"])
    parser.add_argument(
        "--base",
        default="full",
        choices=["full", "4bit"],
        help="4bit: the cases train on the base loaded in 4 bits; frozen_full: the full-precision frozen one",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="every case with gradient checkpointing (train.py's default with model.quantization=4bit)",
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help="add generation: prefill and decode at batch 1 and 16 (CUDA: 1 and 64)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="all",
        choices=["all", "steps", "generation"],
        help="add every case's torch.compile'd step vs compiled frozen (with --generate: compiled decoding); "
        "`--compile steps` or `--compile generation` compiles only that part (a GPU's compiles take minutes)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="frozen",
        choices=list(bench.CASES),
        metavar="BASELINE",
        help="add each case's training step under torch.profiler: the ops of its extra time over BASELINE "
        "(default frozen; S_r16 skips the layer-0 backward as every adapter does: E's extra over it is E's)",
    )
    args = parser.parse_args(argv)
    if args.compile == "generation" and not args.generate:
        parser.error("--compile generation compiles the decode steps of --generate: add --generate")
    quant, ckpt = args.base == "4bit", args.gradient_checkpointing

    if args.device == "cuda" and not torch.cuda.is_available():  # nothing measured is a failure, not a pass
        print("error: --device cuda: no CUDA device here; nothing was benchmarked", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.warmup, args.no_memory = 2, 1, True
    clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    model = bench.BENCH_MODELS[args.model or bench.DEFAULT_MODEL[args.device]]
    # grouped_mm on CUDA takes bf16 operands only: the adapters there run in the model's dtype.
    adapter_dtype = "float32" if args.device == "cpu" else "model"
    default = QUANT_CASES if quant else [c for c in bench.CASES if c not in bench.OPT_IN_CASES]
    names = ["frozen", *[c for c in (args.cases or default) if c != "frozen"]]
    if args.profile and args.profile not in names:
        names.append(args.profile)
    cfg = model.config()
    print(
        f"model {model.name}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"{cfg.num_experts} experts top-{cfg.num_experts_per_tok}, "
        f"expert intermediate {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
        f"batch {model.batch_size}x{model.seq_len}, {model.dtype}; device {args.device}, clock {clock}, "
        f"{args.threads} thread(s)",
        flush=True,
    )

    mem: dict[str, dict] = {}
    if args.no_memory:
        print("peak memory: skipped (--no-memory)")
    else:
        print("peak memory, one subprocess per case:", flush=True)
        for name in names:
            mem[name] = bench.measure_memory(
                model, name, args.device, args.threads, adapter_dtype, "4bit" if quant else "none", ckpt
            )
            print(f"  {name:14s} {mem[name]['peak_mem_mb']:8.1f} MB above the base weights", flush=True)
        if quant:
            mem["frozen_full"] = bench.measure_memory(
                model, "frozen", args.device, args.threads, adapter_dtype, "none", ckpt
            )
            print(f"  {'frozen_full':14s} {mem['frozen_full']['peak_mem_mb']:8.1f} MB", flush=True)

    start = time.perf_counter()
    base = bench.build_4bit_base(model, args.device) if quant else bench.build_base(model, args.device)
    if ckpt:
        bench.checkpoint(base)
    batch = bench.make_batch(model, args.device)
    cases = {name: bench.Case(name, base, adapter_dtype) for name in names}
    experts = None
    if quant:
        experts = bench.expert_bytes(base)
        full = bench.build_base(model, args.device)
        if ckpt:
            bench.checkpoint(full)
        cases["frozen_full"] = bench.Case("frozen_full", full, adapter_dtype, spec="frozen")
        names.append("frozen_full")
        print(
            f"4-bit base: experts {experts['experts_mb']:.1f} MB, {experts['experts_vs_bf16']:.3f}x their "
            f"{experts['experts_bf16_mb']:.1f} MB in bf16",
            flush=True,
        )
    print(
        f"timing {len(cases)} cases: {args.warmup} warm-up steps each, then {args.rounds} rounds", flush=True
    )
    timings = bench.time_cases(
        cases,
        batch,
        args.device,
        rounds=args.rounds,
        steps=args.steps,
        warmup=args.warmup,
        clock=clock,
        log=lambda s: print(s, flush=True),
    )
    profile = None
    if args.profile:
        visits, steps = (1 if args.quick else 3), 3
        print(
            f"profile: every case's training step under torch.profiler, {visits} visit(s) of {steps} steps, "
            f"against {args.profile}",
            flush=True,
        )
        profiles = bench.profile_steps(cases, batch, args.device, visits=visits, steps=steps)
        profile = [
            bench.profile_difference(profiles, name, args.profile) for name in names if name != args.profile
        ]
    del cases
    generation = generation_compiled = compiled = decode_parts = None
    if args.generate:
        names_gen = [n for n in bench.GENERATION_CASES if n in names]
        shape = bench.GenerationShape(batch_sizes=bench.GENERATION_BATCH_SIZES[args.device])
        print(
            f"generation: {', '.join(names_gen)}; greedy, {shape.prompt_len} prompt + {shape.new_tokens} new "
            f"tokens, batch {', '.join(map(str, shape.batch_sizes))}; {args.rounds} rounds",
            flush=True,
        )
        models = {name: bench.attach(base, name, adapter_dtype).eval() for name in names_gen}
        generation = bench.time_generation(
            models,
            cfg.vocab_size,
            args.device,
            shape,
            rounds=args.rounds,
            clock=clock,
            log=lambda s: print(s, flush=True),
        )
        if args.compile in ("all", "generation"):
            print("generation, compiled: a static KV cache, decode steps through torch.compile", flush=True)
            generation_compiled = bench.time_generation(
                models,
                cfg.vocab_size,
                args.device,
                dataclasses.replace(shape, compiled=True),
                rounds=args.rounds,
                clock=clock,
                log=lambda s: print(s, flush=True),
            )
        del models
        if "E_r16" in names_gen:
            print("decode parts: one MoE block's frozen experts and E's PEFT experts, warm, cold", flush=True)
            reps = 5 if args.quick else 40
            # on the full-precision base (with --base 4bit, frozen_full's), whose expert tensors are plain
            decode_parts = bench.decode_parts(
                full if quant else base, args.device, adapter_dtype, token_counts=shape.batch_sizes, reps=reps
            )
    if args.compile in ("all", "steps"):
        print("torch.compile: every case again, compiled (its first steps compile)", flush=True)
        compiled_cases = {name: bench.Case(name, base, adapter_dtype) for name in names}
        for case in compiled_cases.values():
            case.compile(batch)
        compiled = bench.time_cases(
            compiled_cases,
            batch,
            args.device,
            rounds=args.rounds,
            steps=args.steps,
            warmup=max(args.warmup, 2),  # the first compiled step compiles
            clock=clock,
            log=lambda s: print(s, flush=True),
        )
        del compiled_cases
    del base
    result = {
        "device": args.device,
        "model": model.name,
        "machine": machine(args.device, args.threads),
        "batch": [model.batch_size, model.seq_len],
        "clock": clock,
        "threads": args.threads,
        "gradient_checkpointing": ckpt,
        "rounds": args.rounds,
        "command": " ".join(["python", *sys.argv]),
        "timing_seconds": time.perf_counter() - start,
        "cases": {name: {**timings[name], **mem.get(name, {})} for name in names},
    }
    if generation is not None:
        result["generation"] = generation
    if generation_compiled is not None:
        result["generation_compiled"] = generation_compiled
    if decode_parts is not None:
        result["decode_parts"] = decode_parts
    if compiled is not None:
        result["compiled"] = compiled
    if profile is not None:
        result["profile"] = profile
    if args.eval:
        print("evaluation throughput:", flush=True)
        try:
            result["eval_throughput"] = bench.eval_throughput(args.device, mode=args.eval_mode)
        except Exception as e:  # noqa: BLE001 - an optional section must not lose the timings above
            reason = f"perft_exp.evaluation or the tiny model is not usable: {type(e).__name__}: {e}"
            result["eval_throughput"] = {"skipped": reason}
            print(f"  skipped: {reason}")
    if quant:
        # frozen_full's ratio is the full-precision frozen step over the 4-bit one
        dequant = 1 / result["cases"]["frozen_full"]["ratio_vs_frozen"]
        result.update(base="4bit", experts=experts, frozen_4bit_vs_full=dequant)
    result["targets"] = check_targets(result["cases"], generation, experts, generation_compiled)
    split = rank_split(result["cases"], generation)
    if split:
        result["rank_split"] = split

    print()
    print(format_table(result))
    print()
    if quant:
        print(
            f"the 4-bit frozen step takes {result['frozen_4bit_vs_full']:.3f}x the full-precision "
            f"({model.dtype}) frozen step: the cost of dequantising the weights at every forward and backward"
        )
    if generation is not None:
        print(
            f"Generation (greedy generate(), KV cache; time per decode step and per prefill, {clock} clock):"
        )
        print()
        print(format_generation(generation, clock))
        print()
    if generation_compiled is not None:
        print(
            "Generation, compiled (static KV cache; generate() runs the decode steps through torch.compile, "
            "against the compiled frozen model):"
        )
        print()
        print(format_generation(generation_compiled, clock))
        print()
    if decode_parts is not None:
        print(
            "Decode parts (one MoE block at a decode step, each part alone, wall clock; cold: after reading "
            "a buffer larger than the caches, as a layer finds them in a decode step):"
        )
        print()
        print(format_decode_parts(decode_parts))
        print()
    if split:
        print(
            "What the rank costs (each variant at rank 16 and at rank 1, auto's path; rank 1's ratio is what "
            "no rank removes: hooks, routing, kernel calls):"
        )
        print()
        print(format_rank_split(split))
        print()
    if profile is not None:
        print(
            "Profile (torch.profiler, self time per op, ms a training step, each op's median over the "
            "visits; the profiler's own cost is in both columns; "
            f"{'device' if args.device == 'cuda' else 'CPU'} time):"
        )
        for diff in profile:
            print()
            print(format_profile(diff))
        print()
    if compiled is not None:
        print("torch.compile'd training step:")
        print()
        print(format_compiled(compiled, clock))
        print()
    for check in result["targets"]:
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['target']}: {check['value']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
