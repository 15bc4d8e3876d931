"""Evaluation throughput (questions/s) at several batch sizes, and the speed-up of batching.

    python scripts/bench_eval.py                                # random tiny OLMoE, synthetic questions
    python scripts/bench_eval.py --tiny tiny_olmoe              # the project's pre-trained tiny model
    python scripts/bench_eval.py --model-dir PATH --data-dir data --test-sets boolq piqa --dtype bfloat16

Questions come from `<data-dir>/dataset/<set>/test.json` when --data-dir is given, else from the
synthetic suites. Every batch size evaluates the same questions through `perft_exp.evaluation.evaluate`
after one warm-up call; the goal is bs16 / bs1 >= 4.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from perft_exp.data.formats import COMMONSENSE_TEST_SETS, MATH_TEST_SETS, canonical_test_set, load_test_sets
from perft_exp.evaluation import MODES, evaluate


def build_random_tiny(out_dir: Path, name: str = "tiny_olmoe") -> Path:
    """The tiny model's tokenizer and architecture, random weights (no pre-training), saved to `out_dir`."""
    from perft_exp.models.tiny.build import build_config, build_tokenizer
    from perft_exp.models.tiny_spec import TINY_SPECS

    spec = TINY_SPECS[name]
    tokenizer = build_tokenizer(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(build_config(spec, tokenizer))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _questions(data_dir: Path | None, names: list[str], n_per_set: int) -> dict[str, list[dict]]:
    if data_dir is not None:
        sets = load_test_sets(data_dir, names)
    else:
        from perft_exp.data.synthetic import make_suite

        sets = {}
        for kind, kind_sets in (("commonsense", COMMONSENSE_TEST_SETS), ("math", MATH_TEST_SETS)):
            wanted = [n for n in names if n in kind_sets]
            if wanted:
                tests = make_suite(kind, n_train=1, n_test=n_per_set)[1]
                sets.update({n: tests[n] for n in wanted})
    return {name: records[:n_per_set] for name, records in sets.items()}


def bench(
    model_dir: Path,
    sets: dict[str, list[dict]],
    batch_sizes: list[int],
    mode: str,
    max_new_tokens: int | None,
    device: str,
    dtype: torch.dtype,
) -> dict[int, float]:
    """{batch size: questions/s} over all of `sets`."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    warmup = {name: records[: max(batch_sizes)] for name, records in list(sets.items())[:1]}
    evaluate(model, tokenizer, warmup, mode, max(batch_sizes), max_new_tokens, progress=False)
    speeds = {}
    for bs in batch_sizes:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        speeds[bs] = evaluate(model, tokenizer, sets, mode, bs, max_new_tokens, progress=False)[
            "questions_per_s"
        ]
        print(f"batch_size={bs:3d}  {speeds[bs]:8.2f} questions/s", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, help="a saved HF causal LM + tokenizer")
    source.add_argument("--tiny", help="a perft_exp.models.tiny name (built and cached on first use)")
    parser.add_argument("--data-dir", type=Path, help="LLM-Adapters data dir; default: synthetic questions")
    parser.add_argument("--test-sets", nargs="+", default=list(COMMONSENSE_TEST_SETS))
    parser.add_argument("--n-per-set", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--mode", choices=MODES, default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    # On a shared CPU, OpenMP threads that wait for busy cores can slow tiny models tenfold.
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sets = _questions(args.data_dir, [canonical_test_set(n) for n in args.test_sets], args.n_per_set)
    n = sum(map(len, sets.values()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            model_dir = args.model_dir
        elif args.tiny:
            from perft_exp.models.tiny import ensure_tiny_model

            model_dir = ensure_tiny_model(args.tiny)
        else:
            model_dir = build_random_tiny(Path(tmp))
        print(
            f"model={model_dir} device={args.device} dtype={args.dtype} mode={args.mode} questions={n} "
            f"threads={torch.get_num_threads()}"
        )
        speeds = bench(
            model_dir,
            sets,
            args.batch_sizes,
            args.mode,
            args.max_new_tokens,
            args.device,
            getattr(torch, args.dtype),
        )
    if 1 in speeds and 16 in speeds:
        print(f"speed-up bs16/bs1: {speeds[16] / speeds[1]:.2f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
