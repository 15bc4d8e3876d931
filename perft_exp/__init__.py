"""perft-exp: PERFT (Parameter-Efficient Routed Fine-Tuning) for Mixture-of-Experts language models.

Subpackages:
  adapters/    PEFT experts, the R/E/D/S variants, the HF-PEFT LoRA baselines, save/load, counting
  models/      loading (hub id or local path), one file of facts per MoE architecture, the tiny model
  data/        LLM-Adapters JSON tasks, the prompt template, synthetic suites, collation
  training/    HF Trainer + DeepSpeed + W&B wiring
  evaluation/  generation, answer extraction, metrics
  analysis/    tables, figures and routing analysis over finished runs
"""

__version__ = "0.1.0"
