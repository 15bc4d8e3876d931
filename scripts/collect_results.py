r"""Gather every finished run below a directory into a CSV, the paper's Markdown table, PNG figures and the
paired comparisons between its configurations.

    python scripts/collect_results.py outputs/runs --out outputs/report
    python scripts/collect_results.py outputs/runs/synthetic_commonsense/tiny_olmoe --runs 'toy-*' \
        --out outputs/report/toy

See perft_exp/analysis/results/ and perft_exp/analysis/paired.py for what each file holds. A run directory
with an unreadable file is listed (file and fix) and left out; the exit code is 0 then unless --strict.
"""

from __future__ import annotations

import argparse
import sys

from perft_exp.analysis.paired import write_paired
from perft_exp.analysis.results.report import write_report
from perft_exp.analysis.results.runs import collect
from perft_exp.run_dir import FAILED_NAME, RESULTS_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help=f"directory searched recursively for {RESULTS_NAME} (and {FAILED_NAME})")
    parser.add_argument("--out", default="outputs/report", help="where results.csv/.md and the PNGs go")
    parser.add_argument(
        "--runs", default="*", help="only run directories whose name matches this glob, e.g. 'toy-*'"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when any run directory is corrupt")
    args = parser.parse_args(argv)
    collection = collect(args.root, args.runs)
    for line in collection.corrupt:
        print(f"corrupt, skipped: {line}", file=sys.stderr)
    if not collection.runs and not collection.failed:
        print(f"error: no readable {RESULTS_NAME} below {args.root}", file=sys.stderr)
        return 2
    files = write_report(args.root, args.out, args.runs)
    files.update(write_paired(collection, args.out))
    print(
        f"{len(collection.runs)} rows ({len(collection.failed)} failed, "
        f"{len(collection.corrupt)} corrupt runs) from {args.root}:"
    )
    for path in files.values():
        print(f"  {path}")
    return 1 if args.strict and collection.corrupt else 0


if __name__ == "__main__":
    sys.exit(main())
