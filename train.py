"""Fine-tune a frozen MoE model with PERFT (or a LoRA baseline) and evaluate it.

    python train.py                                   # the embedded default: tiny model, synthetic task, CPU
    python train.py variant=R perft.num_experts=4 perft.top_k=2 perft.bottleneck=16
    python train.py model=olmoe_1b_7b task=commonsense trainer=olmoe deepspeed=zero2
    python train.py -m variant=S,D perft.bottleneck=4,16  # a Hydra multirun sweep
    torchrun --nproc_per_node 8 train.py model=mixtral_8x7b trainer=mixtral deepspeed=zero3

The run directory (outputs/runs/<task>/<model>/<name>) gets checkpoints, the adapter, per-example
evaluation files and its results (perft_exp/run_dir.py). Relaunching the same command resumes or skips a
finished run.
"""

from perft_exp.cli import main

if __name__ == "__main__":
    main()
