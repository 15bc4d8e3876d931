"""perft-exp: PERFT (Parameter-Efficient Routed Fine-Tuning) for Mixture-of-Experts language models.

`import perft_exp` registers PERFT with Hugging Face PEFT (peft_type "PERFT"); `perft_exp.PerftConfig` is its PEFT
config, for `peft.get_peft_model(model, perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2))` (docs/peft.md).

Subpackages:
  adapters/    PEFT experts, the R/E/D/S variants, the PEFT tuner, the HF-PEFT LoRA baselines, save/load, counting
  models/      loading (hub id or local path), one file of facts per MoE architecture, the tiny model
  data/        LLM-Adapters JSON tasks, the prompt template, synthetic suites, collation
  training/    HF Trainer + DeepSpeed + W&B wiring
  evaluation/  generation, answer extraction, metrics
  analysis/    tables, figures and routing analysis over finished runs
"""

from perft_exp.adapters.tuner import PerftPeftConfig as PerftConfig
from perft_exp.adapters.tuner import register as _register

__version__ = "0.1.0"
__all__ = ["PerftConfig"]

_register()
