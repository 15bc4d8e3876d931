"""Building a tiny model: its tokenizer, its config, its pre-training on the synthetic world, and the saved
model with its build record (perft_build.json: the spec, the build key, the pre-training losses and what the
model knows afterwards, perft_exp/models/tiny/probes.py).

The cache (perft_exp/models/tiny/cache.py) calls build_tiny_model on a miss; the spec and its key are
perft_exp/models/tiny_spec.py.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm

from perft_exp.data import synthetic
from perft_exp.data.prompts import build_prompt
from perft_exp.models.tiny.probes import knowledge_by_relation, knowledge_report
from perft_exp.models.tiny_spec import TINY_SPECS, TinySpec

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _tokenizer_texts(spec: TinySpec) -> list[str]:
    """What the tokenizer should encode compactly: the corpus, prompts and the corpus's suites."""
    texts = synthetic.pretraining_corpus(seed=spec.seed, n=min(spec.corpus_docs, 4000))
    for kind in synthetic.CORPUS_SUITES:
        train, tests = synthetic.make_suite(kind, n_train=800, n_test=10, seed=spec.seed)
        for rec in train + [r for recs in tests.values() for r in recs]:
            texts.append(build_prompt(rec["instruction"], rec["input"]) + rec["output"])
    return texts


def build_tokenizer(spec: TinySpec) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes, no UNK), digits one per token, BOS prepended."""
    tok = Tokenizer(models.BPE())
    # Split before each digit (keeping a leading space) so numbers are read digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_texts(spec), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=spec.max_position_embeddings,
    )


# ---------------------------------------------------------------------------------------------
# Model


def build_config(
    spec: TinySpec, tokenizer: transformers.PreTrainedTokenizerFast
) -> transformers.PretrainedConfig:
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        num_experts_per_tok=spec.num_experts_per_tok,
        router_aux_loss_coef=spec.router_aux_loss_coef,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if spec.arch == "olmoe":
        return transformers.OlmoeConfig(
            num_experts=spec.num_experts, norm_topk_prob=spec.norm_topk_prob, **common
        )
    return transformers.MixtralConfig(num_local_experts=spec.num_experts, **common)


def _batches(spec: TinySpec, tokenizer: transformers.PreTrainedTokenizerFast) -> torch.Tensor:
    """(steps, batch, seq_len) token ids: the corpus packed into BOS-led rows, documents EOS-separated."""
    docs = synthetic.pretraining_corpus(seed=spec.seed, n=spec.corpus_docs)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    stream = torch.tensor([t for doc in ids for t in doc + [tokenizer.eos_token_id]])
    body = spec.seq_len - 1
    need = spec.steps * spec.batch_size * body
    stream = stream.repeat(math.ceil(need / len(stream)))[:need]  # cycle: several epochs over the facts
    rows = stream.view(spec.steps * spec.batch_size, body)
    rows = torch.cat([torch.full((len(rows), 1), tokenizer.bos_token_id), rows], dim=1)
    g = torch.Generator().manual_seed(spec.seed)
    return rows[torch.randperm(len(rows), generator=g)].view(spec.steps, spec.batch_size, spec.seq_len)


def _lr_lambda(spec: TinySpec):
    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine to 10%

    return f


def pretrain(
    model: transformers.PreTrainedModel, batches: torch.Tensor, spec: TinySpec, progress: bool
) -> list[float]:
    """Full-parameter causal-LM training with the router's load-balancing loss; returns LM losses."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec))
    losses: list[float] = []
    bar = tqdm(batches, desc="pretrain", disable=not progress, dynamic_ncols=True)
    for batch in bar:
        out = model(input_ids=batch, labels=batch, output_router_logits=True)
        out.loss.backward()  # LM loss + aux_coef * load balancing
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        lm_loss = (out.loss - spec.router_aux_loss_coef * out.aux_loss).item()
        losses.append(lm_loss)
        bar.set_postfix(loss=f"{lm_loss:.3f}")
    model.eval()
    return losses


def build_tiny_model(
    name: str, out_dir: str | Path, progress: bool = True, spec: TinySpec | None = None
) -> Path:
    """Build, pre-train and save `name` (or `spec`, which overrides the registry) into out_dir."""
    spec = spec or TINY_SPECS[name]
    out = Path(out_dir)
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer(spec)
    t_tok = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_config(build_config(spec, tokenizer))
    batches = _batches(spec, tokenizer)
    losses = pretrain(model, batches, spec, progress)
    t_train = time.perf_counter()
    knowledge = knowledge_report(model, tokenizer)
    by_relation = knowledge_by_relation(model, tokenizer)
    final_loss = sum(losses[-20:]) / len(losses[-20:]) if losses else float("nan")
    if progress:
        print(
            f"{name}: pretraining loss {losses[0] if losses else float('nan'):.3f} -> {final_loss:.3f}, "
            + ", ".join(f"{k} {v:.1%}" for k, v in knowledge.items())
            + f", {t_train - t0:.0f}s"
        )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    build = {
        "name": name,
        "spec": asdict(spec),
        "key": spec.key(),
        "seed": spec.seed,
        "n_params": n_params,
        "pretrain_tokens": batches.numel(),
        "pretrain_loss_first": losses[0] if losses else None,
        "pretrain_loss_final": final_loss if losses else None,
        **knowledge,
        "by_relation": by_relation,
        "seconds": {"tokenizer": t_tok - t0, "pretrain": t_train - t_tok, "total": time.perf_counter() - t0},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "perft_build.json").write_text(json.dumps(build, indent=1))
    return out
