"""perft-exp: PERFT (Parameter-Efficient Routed Fine-Tuning) for Mixture-of-Experts language models.

`import perft_exp` registers PERFT with Hugging Face PEFT (peft_type "PERFT"); `perft_exp.PerftConfig` is its
PEFT config, for `peft.get_peft_model(model, perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2))`
(docs/peft.md).

The import itself stays light: torch-free modules (the run directory, the sweep grids, the configs) never load
torch or peft through it. Registration happens when peft is imported, now or later, by anyone: if peft is
already loaded it runs at once, otherwise a one-shot import hook runs it right after peft's own import.

Subpackages:
  adapters/    PEFT experts, the R/E/D/S variants, the PEFT tuner, the HF-PEFT LoRA baselines,
               save/load, counting
  models/      loading (hub id or local path), one file of facts per MoE architecture, the tiny model
  data/        LLM-Adapters JSON tasks, the prompt template, synthetic suites, collation
  training/    HF Trainer + DeepSpeed + W&B wiring
  evaluation/  generation, answer extraction, metrics
  analysis/    tables, figures and routing analysis over finished runs
"""

from __future__ import annotations

import importlib.abc
import sys

__version__ = "0.1.0"
__all__ = ["MoEBitsAndBytesConfig", "PerftConfig"]


def _register() -> None:
    from perft_exp.adapters.tuner import register

    register()


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds nothing of its own: it hands out peft's spec with a loader that registers PERFT as soon as peft's
    `__init__` has run, then leaves sys.meta_path. (transformers probes peft with `find_spec` before importing
    it, so every spec handed out carries the hook.)"""

    def find_spec(self, fullname, path, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:
            spec = (
                None
                if finder is self
                else getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            )
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


if "peft" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterPeft) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterPeft())


def __getattr__(name: str):
    if name == "PerftConfig":
        from perft_exp.adapters.tuner import PerftPeftConfig

        return PerftPeftConfig
    if name == "MoEBitsAndBytesConfig":
        from perft_exp.models.quantization import MoEBitsAndBytesConfig

        return MoEBitsAndBytesConfig
    raise AttributeError(f"module 'perft_exp' has no attribute {name!r}")
