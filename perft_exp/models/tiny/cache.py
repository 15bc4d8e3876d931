"""The tiny models' cache: where a built model lives and building it on a miss.

The demo's model ships with the code: `shipped/tiny_olmoe-<build key>/` (8.5 MB) is the build of that key,
made once and committed, because pre-training it is float arithmetic over 800 steps and its bits differ
between CPU kinds (AVX-512 and AVX2 kernels sum in different orders): every machine starts from the same
weights, so the untuned model scores the same everywhere. A spec with a shipped copy is never built again
unless asked (`build_locally=True`, `python -m perft_exp.models.tiny <name> --build-locally`); a changed spec
has another key, misses the shipped copy and is built locally as before.

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
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"  # package data (pyproject.toml)


def default_cache_root() -> Path:
    """$PERFT_CACHE, else <repo>/.cache/perft_exp."""
    return Path(os.environ.get("PERFT_CACHE", REPO_ROOT / ".cache" / "perft_exp"))


def model_dir(name: str, spec: TinySpec, cache_root: Path) -> Path:
    """The cache directory of `name` built from `spec`: `<name>-<build key>`."""
    return cache_root / f"{name}-{spec.key()}"


def shipped_model(name: str, spec: TinySpec) -> Path | None:
    """The shipped build of `name` from `spec` (None when none ships: another spec, another model)."""
    path = model_dir(name, spec, SHIPPED_ROOT)
    return path if (path / "perft_build.json").is_file() else None


def ensure_tiny_model(
    name: str,
    cache_root: str | Path | None = None,
    spec: TinySpec | None = None,
    progress: bool = True,
    build_locally: bool = False,
) -> Path:
    """Path of the model for `name` (or `spec`): the shipped build when there is one (unless
    `build_locally`), else the cached one, built on first use."""
    spec = spec or TINY_SPECS[name]
    shipped = None if build_locally else shipped_model(name, spec)
    if shipped is not None:
        return shipped
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
