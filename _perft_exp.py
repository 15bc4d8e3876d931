"""PERFT's registration with Hugging Face PEFT, armed before anything imports perft_exp.

PEFT finds a method by its `peft_type` in three dicts of `peft.mapping`; perft_exp/adapters/tuner.py adds
"PERFT" to them when it is imported. So a tool that loads a PERFT adapter without importing perft_exp
(`lm_eval --model hf --model_args ...,peft=<adapter>`, `AutoPeftModelForCausalLM.from_pretrained(<adapter>)`)
only needs tuner.py imported once peft is. This module arranges that, and nothing else:

- `install()` imports tuner.py at once if peft is already loaded; otherwise it puts a finder first on
  `sys.meta_path` that hands out peft's own spec with a loader that, after peft's `__init__` has run, takes
  the finder off `sys.meta_path` and imports tuner.py.
- `_perft_exp.pth`, installed beside this file in site-packages by `pip install .` and `pip install -e .`
  (setup.py), runs `import _perft_exp; _perft_exp.install()` when Python starts, so the finder is in place in
  every process of the environment. `import perft_exp` calls `install()` too (a checkout used without
  installing it).

Why it is safe in every import order: the finder only ever *imports* tuner.py, which registers as its own
last statement. If tuner.py is what triggered peft's import (`from perft_exp import PerftConfig` in a fresh
process), the import finds tuner.py half-executed in `sys.modules`, returns it without running it again,
and tuner.py registers when it finishes; there is no `from tuner import name` on a half-made module.

Why it is cheap: this file imports nothing but `sys` (the finder compares one string per import until peft
loads, then leaves), so start-up is not slowed measurably; torch and peft load only when something imports
peft. It is a top-level module, not part of perft_exp, so start-up never imports perft_exp itself: a
checkout's own perft_exp (the script's directory first on sys.path) still wins over the installed one.

A failure to register while importing peft for someone else (a broken perft_exp) is a warning, never an
error of `import peft`; `import perft_exp` then raises the real error.
"""

from __future__ import annotations

import sys


def _register() -> None:
    import perft_exp.adapters.tuner  # noqa: F401  (registers PERFT with peft as its last statement)


class _RegisterAfterPeft:
    """A meta path finder that finds nothing of its own: it wraps peft's loader (see the module docstring).

    transformers asks for peft's spec (`importlib.util.find_spec`) before importing it, so every spec handed
    out carries the wrapper, and only a real import runs it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                _register()
            except Exception as e:  # never break `import peft` for a process that does not use PERFT
                import warnings

                warnings.warn(f"perft-exp could not register PERFT with peft: {e}", stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register PERFT with peft now if peft is loaded, else right after peft's own import (idempotent)."""
    if "peft" in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterPeft) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeft())
