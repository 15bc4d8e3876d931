"""Write a synthetic test set as a local lm-evaluation-harness task (multiple choice over its answer labels).

    python scripts/lm_eval_task.py outputs/lm_eval_tasks                     # boolq of synthetic_commonsense
    python scripts/lm_eval_task.py outputs/lm_eval_tasks test_set=ARC-Easy n=32

Writes <out>/<task>.yaml and <out>/<task>.jsonl; score a PERFT adapter on it with lm-eval (docs/peft.md):
    python -c "import perft_exp, sys; from lm_eval.__main__ import cli_evaluate; sys.argv[0] = 'lm_eval'; \
cli_evaluate()" run --model hf --model_args pretrained=<base>,peft=<adapter> --tasks perft_synthetic_boolq \
--include_path outputs/lm_eval_tasks --device cpu
Each document is the project's prompt (perft_exp/data/prompts.py) ending in "the correct answer is"; the
choices are the set's answer labels (true/false, answer1..., option1...), scored by their log-likelihood.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from perft_exp.data.prompts import build_prompt
from perft_exp.data.synthetic.suite import make_suite

ANSWER_PREFIX = "the correct answer is"  # the synthetic records' response: "the correct answer is <label>"


def task_name(test_set: str) -> str:
    return "perft_synthetic_" + re.sub(r"[^a-z0-9]+", "_", test_set.lower()).strip("_")


def write_task(out_dir: str | Path, test_set: str = "boolq", n: int = 64, seed: int = 0) -> str:
    """Write the task's YAML and JSONL under out_dir; return the task name."""
    _, tests = make_suite("commonsense", 0, n, seed)
    if test_set not in tests:
        raise ValueError(
            f"test_set={test_set!r} is not a synthetic commonsense set; choose one of {', '.join(tests)}"
        )
    records = tests[test_set]
    choices = sorted({r["answer"] for r in records})
    name, out = task_name(test_set), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [
        {
            "prompt": build_prompt(r["instruction"], r["input"]) + ANSWER_PREFIX,
            "choices": choices,
            "label": choices.index(r["answer"]),
        }
        for r in records
    ]
    (out / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {(out / f'{name}.jsonl').resolve()}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return name


def main() -> None:
    args = [a for a in sys.argv[1:] if "=" not in a]
    opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    if len(args) != 1:
        sys.exit("usage: scripts/lm_eval_task.py OUT_DIR [test_set=boolq] [n=64]")
    try:
        name = write_task(args[0], opts.get("test_set", "boolq"), int(opts.get("n", 64)))
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote task {name} to {args[0]}")


if __name__ == "__main__":
    main()
