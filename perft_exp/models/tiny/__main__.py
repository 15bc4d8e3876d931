"""The tiny models' command line: build (or find in the cache) and print the path, and with --report what
the model knows of the held-out facts, per relation.

    python -m perft_exp.models.tiny tiny_olmoe [--cache-root DIR]
    python -m perft_exp.models.tiny tiny_olmoe --report
    python -m perft_exp.models.tiny tiny_olmoe --build-locally   # pre-train it here, not the shipped copy

To ship a new build (after changing the recipe: its key changes), build it locally into the shipped
directory and commit it: `--build-locally --cache-root perft_exp/models/tiny/shipped`.
"""

from __future__ import annotations

import argparse

from perft_exp.models.tiny.cache import ensure_tiny_model
from perft_exp.models.tiny_spec import TINY_SPECS


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m perft_exp.models.tiny", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("name", choices=sorted(TINY_SPECS))
    parser.add_argument("--cache-root", default=None)
    parser.add_argument(
        "--report",
        action="store_true",
        help="also print what the model knows of the held-out facts, per relation",
    )
    parser.add_argument(
        "--build-locally",
        action="store_true",
        help="find or build the model in the cache even when a build of it ships with the code",
    )
    args = parser.parse_args()
    path = ensure_tiny_model(args.name, args.cache_root, build_locally=args.build_locally)
    print(path)
    if args.report:
        from perft_exp.models.tiny.probes import knowledge_table

        print(knowledge_table(path))


if __name__ == "__main__":
    main()
