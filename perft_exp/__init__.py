"""perft-exp: PERFT (Parameter-Efficient Routed Fine-Tuning) for Mixture-of-Experts language models.

`import perft_exp` registers PERFT with Hugging Face PEFT (peft_type "PERFT"); `perft_exp.PerftConfig` is its
PEFT config, for `peft.get_peft_model(model, perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2))`
(docs/peft.md).

The import itself stays light: torch-free modules (the run directory, the sweep grids, the configs) never load
torch or peft through it. Registration happens when peft is imported, now or later, by anyone, in any order
(`_perft_exp.py` at the repository root says how and why that is safe): installed, the package arms it at
Python's start-up (`_perft_exp.pth`), so tools that never import perft_exp load PERFT adapters too.

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

import _perft_exp

__version__ = "0.1.0"
__all__ = ["MoEBitsAndBytesConfig", "PerftConfig"]

_perft_exp.install()


def __getattr__(name: str):
    if name == "PerftConfig":
        from perft_exp.adapters.tuner import PerftPeftConfig

        return PerftPeftConfig
    if name == "MoEBitsAndBytesConfig":
        from perft_exp.models.quantization import MoEBitsAndBytesConfig

        return MoEBitsAndBytesConfig
    raise AttributeError(f"module 'perft_exp' has no attribute {name!r}")
