"""Re-evaluate a finished run's adapter without retraining; other tasks or modes by override.

    python scripts/evaluate.py run_dir=outputs/runs/synthetic_commonsense/tiny_olmoe/R-n4-k2-r16-adapter
    python scripts/evaluate.py run_dir=<run> eval.mode=paper
    python scripts/evaluate.py run_dir=<run> task=synthetic_math task.max_test_examples=20
    python scripts/evaluate.py run_dir=<run> variant=none          # the frozen base model

The run's own overrides (Hydra's record of its command line) are replayed first, so the model and adapter
match; results go to <run>/evaluations/<task>-<mode>[-authors][-base]/ (per-example JSONL + the results, see
perft_exp/run_dir.py; -authors with eval.protocol=authors).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from perft_exp.cli import EXIT_HELD, error_line, one_line
from perft_exp.config import compose, group_spec, perft_config
from perft_exp.files import write_error, writing
from perft_exp.optional_imports import hide_unused
from perft_exp.run_dir import RunDir
from perft_exp.run_lock import RunDirHeld


def run(argv: list[str]) -> dict:
    args = dict(a.split("=", 1) for a in argv if a.startswith("run_dir="))
    if "run_dir" not in args:
        raise ValueError("usage: scripts/evaluate.py run_dir=<a finished run> [overrides ...]")
    run_dir = RunDir(args["run_dir"])
    if not run_dir.adapter.is_dir():
        raise ValueError(f"{run_dir} has no adapter/ (is it a finished run directory?)")
    replay = run_dir.overrides()
    overrides = [a for a in argv if not a.startswith("run_dir=")]
    cfg = compose([*replay, *overrides])
    base_only = perft_config(cfg).variant == "none"
    # Before transformers loads: no import-time warnings from packages the run's config does not use.
    hide_unused([cfg])
    from perft_exp.adapters.io import load_adapter
    from perft_exp.data.task import load_task_data
    from perft_exp.evaluation.configured import evaluate_with
    from perft_exp.evaluation.metrics import metrics_table
    from perft_exp.models.loading import load_model

    # The groups a re-evaluation uses, typed (a training run's rules across groups do not apply here)
    base, task, ev = group_spec(cfg.model), group_spec(cfg.task), group_spec(cfg.eval)

    model, tokenizer = load_model(base)
    if not base_only:
        model = load_adapter(model, run_dir.adapter)
    model.eval()
    tests = load_task_data(task).tests
    protocol = "" if ev.protocol == "fixed" else f"-{ev.protocol}"  # never over the fixed one
    out = run_dir.evaluation(f"{task.name}-{ev.mode}{protocol}{'-base' if base_only else ''}")
    with writing(out):
        result = evaluate_with(ev, model, tokenizer, tests, out_dir=out)
    run_dir.write_evaluation(out.name, {"run_dir": str(run_dir), "overrides": overrides, "eval": result})
    print(metrics_table(result))
    print(f"written to {out}")
    return result


def main() -> None:
    argv = sys.argv[1:]
    dirs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith("run_dir=")]
    held = [RunDir(d).hold() for d in dirs if d.is_dir()]
    try:
        with held[0] if held else contextlib.nullcontext():  # nothing loads while another process works there
            run(argv)
    except RunDirHeld as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_HELD)
    except Exception as e:  # noqa: BLE001 - a CLI: one line, non-zero exit
        print(f"error: {error_line(e) if write_error(e) else one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
