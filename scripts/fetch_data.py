"""Download the LLM-Adapters train files and test sets into a data dir (needs a network).

    # into the tasks' data_dir: data/llm_adapters (or $PERFT_DATA_DIR):
    python scripts/fetch_data.py --what all

Lays the files out as `perft_exp.data.formats` reads them:
    <data-dir>/commonsense_170k.json, math_50k.json, math_10k.json, math_14k.json, math_7k.json
    <data-dir>/dataset/<TestSet>/test.json
Every file is checked with the project's strict loader after download; existing files are kept
unless --force is given. Without a network it stops with one line naming the file it could not fetch.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

from perft_exp.cli import one_line
from perft_exp.config import compose
from perft_exp.data.formats import COMMONSENSE_TEST_SETS, MATH_TEST_SETS, load_test_sets, load_train

BASE_URL = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/{ref}/"
TRAIN_FILES = {
    "commonsense": ["commonsense_170k.json"],
    "math": ["math_50k.json", "math_10k.json", "math_14k.json", "math_7k.json"],
}
TEST_SETS = {"commonsense": list(COMMONSENSE_TEST_SETS), "math": list(MATH_TEST_SETS)}


class DownloadError(OSError):
    """A file could not be fetched (no network, or the server refused)."""


def default_data_dir() -> Path:
    """Where the real tasks read their files (conf/task/commonsense.yaml `data_dir`;
    PERFT_DATA_DIR overrides)."""
    return Path(compose(["task=commonsense"]).task.data_dir)


def _download(url: str, dest: Path, force: bool) -> bool:
    """Fetch `url` to `dest` atomically; False if `dest` exists and is kept."""
    if dest.exists() and not force:
        print(f"kept     {dest}")
        return False
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            dest.parent.mkdir(parents=True, exist_ok=True)  # only once the server answers: no empty data dir
            with open(partial, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
    except (urllib.error.URLError, TimeoutError) as e:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    partial.replace(dest)
    print(f"fetched  {dest}  ({dest.stat().st_size / 1e6:.1f} MB)  <- {url}")
    return True


def fetch(
    data_dir: Path, what: str, ref: str = "main", force: bool = False, base_url: str = BASE_URL
) -> None:
    base = base_url.format(ref=ref)
    tasks = ["commonsense", "math"] if what == "all" else [what]
    for task in tasks:
        for name in TRAIN_FILES[task]:
            _download(base + f"ft-training_set/{name}", data_dir / name, force)
            print(f"checked  {name}: {len(load_train(data_dir, name))} records")
        for name in TEST_SETS[task]:
            _download(base + f"dataset/{name}/test.json", data_dir / "dataset" / name / "test.json", force)
        for name, records in load_test_sets(data_dir, TEST_SETS[task]).items():
            print(f"checked  {name}: {len(records)} questions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="default: the tasks' task.data_dir")
    parser.add_argument("--what", choices=["commonsense", "math", "all"], default="all")
    parser.add_argument("--ref", default="main", help="git ref of AGI-Edgerunners/LLM-Adapters")
    parser.add_argument("--force", action="store_true", help="re-download files that exist")
    parser.add_argument(
        "--base-url", default=BASE_URL, help="a mirror of the repository ({ref}: the git ref)"
    )
    args = parser.parse_args(argv)
    try:
        fetch(args.data_dir or default_data_dir(), args.what, args.ref, args.force, args.base_url)
    except (OSError, ValueError) as e:  # no network, or a file that does not load: one line
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
