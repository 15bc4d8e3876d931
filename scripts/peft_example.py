"""Use PERFT in your own code: TRL's SFTTrainer with a PERFT config, PEFT's save/load (README, docs/peft.md).

    python scripts/peft_example.py                                        # the tiny OLMoE, a few steps, CPU
    python scripts/peft_example.py --model allenai/OLMoE-1B-7B-0924 --steps 100

Trains PERFT-R on the synthetic commonsense suite with
`trl.SFTTrainer(peft_config=perft_exp.PerftConfig(...))`, saves the adapter in PEFT's format and loads it back
with `AutoPeftModelForCausalLM` (the base model found from the adapter config alone), checking that the
reloaded model gives the trained model's logits.
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from peft import AutoPeftModelForCausalLM
from trl import SFTConfig, SFTTrainer

import perft_exp  # registers PERFT with PEFT: before any PERFT adapter is created or loaded
from perft_exp.data.prompts import build_prompt
from perft_exp.data.synthetic.suite import make_suite


def base_path(model: str) -> str:
    """A hub id or local path; `tiny:<name>` builds one of the project's tiny models on first use."""
    if model.startswith("tiny:"):
        from perft_exp.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model(model.split(":", 1)[1]))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:tiny_olmoe")
    parser.add_argument("--out", default="outputs/peft_example")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    model_path = base_path(args.model)

    train, _ = make_suite("commonsense", 64, 1)
    texts = [build_prompt(r["instruction"], r["input"]) + r["output"] for r in train]
    trainer = SFTTrainer(
        model=model_path,
        train_dataset=Dataset.from_dict({"text": texts}),
        peft_config=perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=16),
        args=SFTConfig(
            output_dir=f"{args.out}/trl",
            max_steps=args.steps,
            per_device_train_batch_size=4,
            learning_rate=1e-4,
            report_to=[],
            save_strategy="no",
            bf16=False,
        ),
    )
    trainer.model.print_trainable_parameters()
    trainer.train()
    trainer.save_model(f"{args.out}/adapter")  # adapter_config.json ("peft_type": "PERFT") + safetensors

    batch = trainer.processing_class(texts[:2], return_tensors="pt", padding=True).to(trainer.model.device)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(f"{args.out}/adapter").to(trainer.model.device).eval()
    with torch.no_grad():
        equal = torch.equal(trainer.model.eval()(**batch).logits, reloaded(**batch).logits)
    if not equal:
        raise SystemExit("error: the reloaded adapter gives other logits than the trained one")
    print(f"PERFT adapter at {args.out}/adapter: reloaded with equal logits")


if __name__ == "__main__":
    main()
