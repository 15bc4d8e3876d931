"""PERFT in the field's tools: TRL's SFTTrainer takes `peft_config=perft_exp.PerftConfig(...)`, and
lm-evaluation-harness scores a saved PERFT adapter with `--model hf --model_args pretrained=...,peft=...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import perft_exp
from perft_exp.adapters.layer import perft_layers

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "the glim is heavy. the correct answer is true",
    "eve likes to swim. the correct answer is answer2",
    "the blorp is small. the correct answer is option1",
    "is the glim heavy? the correct answer is false",
]


def _one_process(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_trl_sft_trainer_trains_R_with_its_router_loss_and_saves_it(micro_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _one_process(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=64,
        bf16=False,  # fp32: the reloaded logits must equal the trained ones exactly
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(micro_model_dir),
        args=args,
        train_dataset=Dataset.from_dict({"text": TEXTS * 2}),
        processing_class=tokenizer,
        peft_config=perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=4, dropout=0.0),
    )
    model = trainer.model
    router = next(perft_layers(model)).router.weight
    before = router.detach().clone()
    trainer.train()
    assert not torch.equal(router, before), "R's router did not train"
    batch = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    model.train()
    out = model(**batch, labels=batch["input_ids"])
    assert out.perft_aux_loss is not None  # what TRL's loss (model(**batch).loss) included at every step

    trainer.save_model(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "PERFT"
    model.eval()
    with torch.no_grad():
        ref = model(**batch).logits
        loaded = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(micro_model_dir), tmp_path / "adapter"
        )
        torch.testing.assert_close(loaded.eval()(**batch).logits, ref, atol=0, rtol=0)


def _choice_scores(model, tokenizer, docs: list[dict]) -> list[list[float]]:
    """Per document, each choice's summed continuation log-likelihood,
    as lm-eval's `loglikelihood` computes it."""
    out = []
    for doc in docs:
        ctx = tokenizer(doc["prompt"])["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["prompt"] + " " + choice)["input_ids"]  # lm-eval's target_delimiter
            cont = whole[len(ctx) :]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        out.append(scores)
    return out


def _loglik(resp) -> float:
    """A logged (log-likelihood, is-greedy) response, as a list or its string form."""
    while isinstance(resp, list | tuple):
        resp = resp[0]
    return float(resp.strip("()[] ").split(",")[0]) if isinstance(resp, str) else float(resp)


@pytest.mark.slow
def test_lm_eval_scores_a_perft_adapter(micro_model_dir, tmp_path):
    """The documented command (docs/peft.md) on a local task made from the synthetic suite: lm-eval's own
    console script, in a process that never imports perft_exp (the start-up line registers PERFT)."""
    pytest.importorskip("lm_eval")
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO / "scripts"))
    from lm_eval_task import write_task

    tasks = tmp_path / "tasks"
    name = write_task(tasks, "boolq", n=16)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(micro_model_dir),
        perft_exp.PerftConfig(variant="D", num_experts=2, bottleneck=4),
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    cmd = [
        str(Path(sys.executable).parent / "lm_eval"),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={micro_model_dir},peft={tmp_path / 'adapter'},dtype=float32",
        "--tasks",
        name,
        "--include_path",
        str(tasks),
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--output_path",
        str(tmp_path / "scores"),
        "--log_samples",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "scores").rglob("results_*.json")).read_text())
    samples = [
        json.loads(line)
        for line in next((tmp_path / "scores").rglob("samples_*.jsonl")).read_text().splitlines()
    ]
    scored = [[_loglik(r) for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]

    docs = [json.loads(line) for line in (tasks / f"{name}.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    base = AutoModelForCausalLM.from_pretrained(micro_model_dir).eval()
    base_scores = _choice_scores(base, tokenizer, docs)
    tuned = _choice_scores(PeftModel.from_pretrained(base, tmp_path / "adapter").eval(), tokenizer, docs)
    # lm-eval scored the adapter, not the base model
    assert torch.allclose(torch.tensor(scored), torch.tensor(tuned), atol=1e-4)
    assert not torch.allclose(torch.tensor(scored), torch.tensor(base_scores), atol=1e-2)
    right = sum(max(range(len(s)), key=s.__getitem__) == d["label"] for s, d in zip(tuned, docs))
    assert result["results"][name]["acc,none"] == pytest.approx(right / len(docs))


# --- post-training beyond SFT: TRL's GRPO and DPO train PERFT adapters ------------------------------------

# TRL trainer arguments for a few CPU steps that log every step and write nothing but the test's files.
QUIET_CPU = dict(logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False)
PROMPTS = ["the glim is", "eve likes to", "the blorp is", "is the glim heavy?"]


def _grpo(micro_model_dir, tmp_path, aux_loss_coef: float, reward, **config):
    """GRPO for one step with R attached; `config`: more GRPOConfig arguments."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path / f"grpo-{aux_loss_coef}"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        learning_rate=1e-2,
        **QUIET_CPU,
        seed=0,
        **config,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(micro_model_dir),
        reward_funcs=reward,
        args=args,
        train_dataset=_dataset({"prompt": PROMPTS}),
        processing_class=AutoTokenizer.from_pretrained(micro_model_dir, padding_side="left"),
        # B = 0 at the start: the output does not depend on R's router yet, so only R's own load-balancing
        # term gives the router a gradient in the first step
        peft_config=perft_exp.PerftConfig(
            variant="R",
            num_experts=4,
            top_k=2,
            bottleneck=4,
            dropout=0.0,
            init="zero_b",
            aux_loss_coef=aux_loss_coef,
        ),
    )
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer.train()
    moved = {n for n, p in params.items() if not torch.equal(p, before[n])}
    return trainer, any(".router." in n for n in moved), bool(moved)


def _dataset(columns: dict):
    from datasets import Dataset

    return Dataset.from_dict(columns)


def test_trl_grpo_trains_R_and_its_router_loss_reaches_the_loss(micro_model_dir, tmp_path, monkeypatch):
    """A constant reward gives every completion advantage 0, so the policy loss has no gradient: R's router
    moves only if its load-balancing term is in GRPO's loss (folded into `aux_loss`, which GRPO adds)."""
    pytest.importorskip("trl")
    _one_process(monkeypatch)

    def constant(completions, **kwargs):
        return [1.0] * len(completions)

    trainer, router_moved, _ = _grpo(micro_model_dir, tmp_path, 0.05, constant)
    assert router_moved, "R's router did not train from its load-balancing loss"
    logged = [h for h in trainer.state.log_history if "aux_loss" in h]
    assert logged and logged[0]["aux_loss"] > 0
    _, router_moved, _ = _grpo(micro_model_dir, tmp_path, 0.0, constant)  # the control: no router loss
    assert not router_moved

    assert _grpo(micro_model_dir, tmp_path, 0.0, _longer)[2], "GRPO trained nothing"


def _longer(completions, **kwargs):  # a reward that differs between completions: the policy loss trains
    return [float(len(c)) for c in completions]


@pytest.mark.slow
def test_trl_grpo_rolls_out_over_a_static_cache(micro_model_dir, tmp_path, monkeypatch):
    """`GRPOConfig(cache_implementation="static")`: the rollouts decode with R attached over a static KV
    cache and GRPO trains. TRL switches generate()'s own compile off (`disable_compile`), so the rollouts
    run eagerly (docs/peft.md)."""
    pytest.importorskip("trl")
    _one_process(monkeypatch)
    trainer, _, moved = _grpo(micro_model_dir, tmp_path, 0.0, _longer, cache_implementation="static")
    assert moved, "GRPO trained nothing"
    assert trainer.generation_config.cache_implementation == "static"
    assert trainer.generation_config.disable_compile


def test_trl_dpo_trains_a_perft_adapter_against_the_base_model(micro_model_dir, tmp_path, monkeypatch):
    """DPO with `peft_config`: no reference copy; the reference log-probs are the frozen base model's, through
    PERFT's `disable_adapter()` (checked against a separately loaded base model)."""
    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _one_process(monkeypatch)
    data = _dataset(
        {"prompt": PROMPTS, "chosen": [" heavy", " swim", " small", " yes"], "rejected": [" red"] * 4}
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        beta=0.1,
        **QUIET_CPU,
        max_length=32,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(micro_model_dir),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(micro_model_dir),
        peft_config=perft_exp.PerftConfig(variant="E", bottleneck=4, dropout=0.0),
    )
    assert trainer.ref_model is None
    model = trainer.model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an adapter that visibly changes the policy, so policy and base differ
        for p in (p for layer in perft_layers(model) for p in layer.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    ref_chosen = metrics["logps/chosen"] - metrics["rewards/chosen"] / args.beta

    base = AutoModelForCausalLM.from_pretrained(micro_model_dir).eval()
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    base_chosen = (logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)[0].mean().item()
    assert ref_chosen == pytest.approx(base_chosen, abs=1e-3)
    assert abs(metrics["logps/chosen"] - base_chosen) > 2e-2  # the policy is not the base

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in before.items()), "DPO trained nothing"
    assert all(".perft." in n for n in before)  # only the PEFT experts train
