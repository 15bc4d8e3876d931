"""Check that the synthetic suites and a tiny model do what the CPU default run needs (slow; not a test).

Reports greedy accuracy per test set for
  base:     the frozen pre-trained tiny model, no fine-tuning (should be low: it never saw the format),
  tuned:    after a short parameter-efficient fine-tune of that frozen model,
  control:  the same fine-tune on a randomly initialised copy (no pre-trained knowledge).
The fine-tune is HF PEFT LoRA on q_proj/v_proj (`--adapter qv_lora`) or one LoRA-form expert added
in parallel to every MoE block (`--adapter parallel`, PERFT's S variant), loss on the whole
sequence, AdamW with linear warmup and decay. Self-contained on purpose: it checks the data and
the model, not the project's trainer or evaluator.

    python scripts/validate_synthetic.py --kind commonsense
    python scripts/validate_synthetic.py --kind math --steps 400 --no-control
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers
from torch import nn

from perft_exp.data import synthetic
from perft_exp.data.prompts import COMMONSENSE_PREFILL, build_prompt, response_of
from perft_exp.models.tiny import TINY_SPECS, ensure_tiny_model

LABEL_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer[1-5]",
    "ARC-Easy": r"answer[1-5]",
    "ARC-Challenge": r"answer[1-5]",
    "openbookqa": r"answer[1-5]",
    "hellaswag": r"ending[1-4]",
    "winogrande": r"option1|option2",
}


def is_correct(test_set: str, response: str, answer: str) -> bool:
    """The protocol's extraction: first label match (commonsense), last number or option letter (math)."""
    if test_set in LABEL_PATTERNS:
        found = re.search(LABEL_PATTERNS[test_set], response.lower())
        return found is not None and found.group(0) == answer
    if test_set == "AQuA":
        found = re.search(r"answer is \(?([A-E])\b", response) or re.search(r"\b([A-E])\b", response)
        return found is not None and found.group(1) == answer
    numbers = re.findall(r"-?\d+\.?\d*", response.replace(",", ""))
    return bool(numbers) and abs(float(numbers[-1]) - float(answer)) <= 1e-3


class ParallelExpert(nn.Module):
    """Delta(x) = (alpha / r) B A x, added to a MoE block's output (B starts at zero)."""

    def __init__(self, dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.down(x))


def add_adapter(model: transformers.PreTrainedModel, kind: str, rank: int) -> nn.Module:
    """Freeze `model` and attach the trainable adapter; returns the module to train and evaluate."""
    if kind == "qv_lora":
        config = peft.LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        )
        return peft.get_peft_model(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        expert = ParallelExpert(model.config.hidden_size, rank, 2 * rank)
        layer.mlp.add_module("perft_parallel", expert)
        # Parallel composition: the expert reads the MoE block's input, its output is added to the block's.
        layer.mlp.register_forward_hook(lambda mod, args, out: out + mod.perft_parallel(args[0]))
    return model


def encode_training(records: list[dict], tokenizer, cutoff: int) -> list[list[int]]:
    rows = []
    for rec in records:
        ids = tokenizer(build_prompt(rec["instruction"], rec["input"]) + rec["output"])["input_ids"][:cutoff]
        if len(ids) < cutoff:
            ids.append(tokenizer.eos_token_id)
        rows.append(ids)
    return rows


def fine_tune(model: nn.Module, rows: list[list[int]], pad_id: int, args: argparse.Namespace) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / (args.steps - warmup)))
    )
    g = torch.Generator().manual_seed(args.seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(args.steps):
        if len(order) < args.batch_size:
            order += torch.randperm(len(rows), generator=g).tolist()
        batch = [rows[i] for i in order[: args.batch_size]]
        del order[: args.batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in batch])
        mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in batch])[:, None]).long()
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module, tokenizer, root: Path, kind: str, prefill: bool, max_new_tokens: int
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Greedy accuracy per test set (left padding, attention mask passed), and a few responses per set."""
    tokenizer.padding_side = "left"
    scores, samples = {}, {}
    for name in synthetic.TEST_SETS[kind]:
        records = json.loads((root / "dataset" / name / "test.json").read_text())
        prompts = [build_prompt(r["instruction"], r["input"]) + (COMMONSENSE_PREFILL if prefill else "")
                   for r in records]  # fmt: skip
        responses = []
        for i in range(0, len(prompts), 64):
            enc = tokenizer(prompts[i : i + 64], return_tensors="pt", padding=True)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            responses += [response_of(t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        correct = sum(is_correct(name, resp, r["answer"]) for resp, r in zip(responses, records))
        scores[name] = 100.0 * correct / len(records)
        samples[name] = responses[:3]
    scores["average"] = sum(scores.values()) / len(scores)
    return scores, samples


def run(model_path: Path, root: Path, args: argparse.Namespace, random_init: bool) -> dict:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(args.seed)
    if random_init:
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(model_path)
        )
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_path)
    model.eval()
    max_new = 8 if args.kind == "commonsense" else 48
    result: dict = {}

    def score(stage: str) -> None:
        t = time.perf_counter()
        result[stage], result[f"{stage}_samples"] = evaluate(
            model, tokenizer, root, args.kind, False, max_new
        )
        if args.kind == "commonsense":
            result[f"{stage}_prefill"], _ = evaluate(model, tokenizer, root, args.kind, True, 4)
        result[f"{stage}_eval_s"] = time.perf_counter() - t
        print(f"{stage}: {result[stage]['average']:.1f} avg ({result[f'{stage}_eval_s']:.0f}s)", flush=True)

    if not random_init:
        score("base")
    train = json.loads((root / synthetic.TRAIN_FILES[args.kind]).read_text())
    rows = encode_training(train, tokenizer, args.cutoff)
    model = add_adapter(model, args.adapter, args.rank)
    t = time.perf_counter()
    losses = fine_tune(model, rows, tokenizer.pad_token_id, args)
    result["fine_tune_s"] = time.perf_counter() - t
    result["loss_first_last"] = [losses[0], sum(losses[-20:]) / len(losses[-20:])]
    print(f"fine-tune: loss {losses[0]:.3f} -> {losses[-1]:.3f} ({result['fine_tune_s']:.0f}s)", flush=True)
    score("tuned")
    return result


def print_table(results: dict[str, dict], kind: str) -> None:
    rows = [(f"{who}/{stage}", scores) for who, r in results.items() for stage, scores in r.items()
            if isinstance(scores, dict) and "average" in scores]  # fmt: skip
    names = [*synthetic.TEST_SETS[kind], "average"]
    print(f"{'':24}" + "".join(f"{n[:10]:>11}" for n in names))
    for label, scores in rows:
        print(f"{label:24}" + "".join(f"{scores[n]:11.1f}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny_olmoe", choices=sorted(TINY_SPECS))
    parser.add_argument("--model-path", type=Path, default=None, help="a built model dir (skips the cache)")
    parser.add_argument("--kind", default="commonsense", choices=sorted(synthetic.TEST_SETS))
    parser.add_argument("--adapter", default="qv_lora", choices=["qv_lora", "parallel"])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-control", action="store_true", help="skip the randomly initialised control")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model_path = args.model_path or ensure_tiny_model(args.model)
    print(f"model {model_path} ready after {time.perf_counter() - t0:.0f}s")
    build = json.loads((model_path / "perft_build.json").read_text())
    print(f"pretraining loss {build['pretrain_loss_final']:.3f}, fact recall {build['fact_recall']:.1%}")
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.ensure_suite(args.kind, tmp, seed=args.seed)
        results = {"pretrained": run(model_path, root, args, random_init=False)}
        if not args.no_control:
            results["random_init"] = run(model_path, root, args, random_init=True)
    for who, r in results.items():
        timings = {k: round(v, 1) for k, v in r.items() if k.endswith("_s")}
        print(who, "loss first/last", [round(x, 3) for x in r["loss_first_last"]], timings)
    print_table(results, args.kind)
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
