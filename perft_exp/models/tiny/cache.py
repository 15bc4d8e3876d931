"""The tiny models' cache: where a built model lives and building it on a miss.

The cache root is $PERFT_CACHE or <repo>/.cache/perft_exp; each model lives in
`<name>-<build key>` (perft_exp/models/tiny_spec.py), so a changed spec builds a new directory.
A build runs beside its target under a lock and is renamed into place: concurrent callers build once,
an interrupted build leaves only a hidden temporary directory, removed by the next build.

Torch-free until a build runs (perft_exp/models/tiny/build.py is imported then).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from perft_exp.models.tiny_spec import TINY_SPECS, TinySpec

REPO_ROOT = Path(__file__).resolve().parents[3]


def default_cache_root() -> Path:
    """$PERFT_CACHE, else <repo>/.cache/perft_exp."""
    return Path(os.environ.get("PERFT_CACHE", REPO_ROOT / ".cache" / "perft_exp"))


def model_dir(name: str, spec: TinySpec, cache_root: Path) -> Path:
    """The cache directory of `name` built from `spec`: `<name>-<build key>`."""
    return cache_root / f"{name}-{spec.key()}"


def ensure_tiny_model(
    name: str, cache_root: str | Path | None = None, spec: TinySpec | None = None, progress: bool = True
) -> Path:
    """Path of the cached model for `name` (or `spec`), building it on first use."""
    spec = spec or TINY_SPECS[name]
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = model_dir(name, spec, root)
    if (final / "perft_build.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time (torchrun ranks, parallel sweep jobs): the others wait, then find the cache.
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "perft_build.json").exists():
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        # Build beside the target and rename: an interrupted build leaves only a hidden temp dir.
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.tmp-"))
        try:
            from perft_exp.models.tiny.build import build_tiny_model

            build_tiny_model(name, tmp, progress=progress, spec=spec)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
