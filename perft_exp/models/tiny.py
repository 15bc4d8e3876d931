"""Tiny OLMoE / Mixtral models, pre-trained on the synthetic world, for CPU runs and tests.

A tiny model is built from the Hugging Face config classes, given a byte-level BPE tokenizer
trained offline on the synthetic text, briefly pre-trained (full parameters, plain causal LM) on
`perft_exp.data.synthetic.pretraining_corpus()` so that its frozen weights know the world's
facts, and saved with `save_pretrained`: it then loads through the same
`AutoModelForCausalLM.from_pretrained(path)` / `AutoTokenizer.from_pretrained(path)` path as a
hub checkpoint.

Usage:
    from perft_exp.models.tiny import ensure_tiny_model
    path = ensure_tiny_model("tiny_olmoe")   # built once (about 4.5 min on 2 cores), cached after

    python -m perft_exp.models.tiny tiny_olmoe [--cache-root DIR]   # build (or find) and print the path
    python -m perft_exp.models.tiny tiny_olmoe --report   # ... and what it knows of the held-out facts

The cache root is $PERFT_CACHE or <repo>/.cache/perft_exp; each model lives in
`<name>-<hash of spec and data version>`, so a changed spec builds a new directory.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm

from perft_exp.data import synthetic
from perft_exp.data.prompts import build_prompt
from perft_exp.data.synthetic.commonsense import ASKS
from perft_exp.data.synthetic.world import RELATIONS, VALUES
from perft_exp.evaluation.evaluator import left_padding
from perft_exp.models.tiny_spec import TINY_SPECS, TinySpec

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_cache_root() -> Path:
    return Path(os.environ.get("PERFT_CACHE", REPO_ROOT / ".cache" / "perft_exp"))


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


@torch.no_grad()
def probe_accuracy(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerFast,
    probes: list,
    sep: str = " ",
) -> float:
    """Share of (prefix, value, values) probes whose value's first token the model ranks first among the
    first tokens of the relation's values (a choice among the candidates, not free generation); a
    value continues its prefix after `sep` ("" for an option's number, "answer" -> "3")."""
    if not probes:
        return float("nan")
    prefixes = [tokenizer(p)["input_ids"] for p, _, _ in probes]
    width = max(map(len, prefixes))
    ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prefixes])
    lengths = torch.tensor([len(p) for p in prefixes])
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
    last = logits[torch.arange(len(probes)), lengths - 1].cpu()  # (P, V)
    hits = 0
    for row, (_, value, values) in zip(last, probes):
        firsts = [tokenizer(sep + v, add_special_tokens=False)["input_ids"][0] for v in values]
        hits += firsts[int(row[firsts].argmax())] == firsts[values.index(value)]
    return hits / len(probes)


@torch.no_grad()
def completion_accuracy(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerFast,
    probes: list[tuple[str, int]],
    max_new_tokens: int = 4,
) -> float:
    """Share of (prefix, number) probes whose greedy continuation starts with the number ("7 + 5 =" -> " 12.")."""
    if not probes:
        return float("nan")
    hits = 0
    with left_padding(tokenizer):
        for start in range(0, len(probes), 128):
            chunk = probes[start : start + 128]
            enc = tokenizer([p for p, _ in chunk], return_tensors="pt", padding=True).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            for row, (_, want) in zip(out[:, enc["input_ids"].shape[1] :], chunk):
                found = re.match(r"\s*(\d+)", tokenizer.decode(row, skip_special_tokens=True))
                hits += found is not None and int(found.group(1)) == want
    return hits / len(probes)


def knowledge_report(
    model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerFast
) -> dict[str, float]:
    """What the model stored (statements) and can read out (questions), on train and held-out facts.

    `question_recall_test` is the one that matters: pre-training never asks about those facts.
    Chance is about 1/3 (the mean of 1 / number of values over the facts).
    """
    report = {"fact_recall": probe_accuracy(model, tokenizer, synthetic.fact_probes())}
    for split in ("train", "test"):
        report[f"fact_recall_{split}"] = probe_accuracy(model, tokenizer, synthetic.fact_probes(split))
        report[f"question_recall_{split}"] = probe_accuracy(
            model, tokenizer, synthetic.question_probes(split)
        )
        # The same facts as pre-training exams: recalled *and* mapped to the option's label.
        report[f"exam_recall_{split}"] = probe_accuracy(
            model, tokenizer, synthetic.exam_probes(split), sep=""
        )
    # The pre-training arithmetic table (the steps of `arithmetic_problems`): what share the model completes.
    report["arithmetic_recall"] = completion_accuracy(model, tokenizer, synthetic.arithmetic_probes())
    return report


def knowledge_by_relation(
    model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerFast
) -> dict[str, dict[str, float]]:
    """The held-out facts' `fact_recall_test`, `question_recall_test` and `exam_recall_test`, per relation.

    A build stores and reads out relation by relation, each nearly all or little (measured: a
    relation at 100 % on one pre-training seed is at 40-50 % on another), so the averages of
    `knowledge_report` hide which test sets a build can serve; each commonsense set asks one or
    two relations (see `perft_exp.data.synthetic.commonsense`).
    """
    return {
        relation: {
            "fact_recall_test": probe_accuracy(model, tokenizer, synthetic.fact_probes("test", relation)),
            "question_recall_test": probe_accuracy(
                model, tokenizer, synthetic.question_probes("test", relation)
            ),
            "exam_recall_test": probe_accuracy(
                model, tokenizer, synthetic.exam_probes("test", relation), sep=""
            ),
        }
        for relation in RELATIONS
    }


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


def ensure_tiny_model(
    name: str, cache_root: str | Path | None = None, spec: TinySpec | None = None, progress: bool = True
) -> Path:
    """Path of the cached model for `name` (or `spec`), building it on first use."""
    spec = spec or TINY_SPECS[name]
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / f"{name}-{spec.key()}"
    if (final / "perft_build.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time (torchrun ranks, parallel sweep jobs): the others wait, then find the cache.
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "perft_build.json").exists():
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        # Build beside the target and rename: an interrupted build leaves only a hidden temp dir.
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.tmp-"))
        try:
            build_tiny_model(name, tmp, progress=progress, spec=spec)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def knowledge_table(path: str | Path) -> str:
    """What the tiny model saved at `path` knows of the held-out facts, per relation, as a text table:
    statement completion, question and exam read-out (%, measured now, so older builds report too),
    beside chance (1 / number of values) and the test sets that ask the relation."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    rows = [f"{'relation':10s} {'stored':>7s} {'Q/A':>6s} {'exam':>6s} {'chance':>7s}  asked by"]
    for relation, scores in knowledge_by_relation(model, tokenizer).items():
        stored, qa, exam = (
            100 * scores[k] for k in ("fact_recall_test", "question_recall_test", "exam_recall_test")
        )
        sets = ", ".join(name for name, relations in ASKS.items() if relation in relations) or "-"
        rows.append(
            f"{relation:10s} {stored:7.1f} {qa:6.1f} {exam:6.1f} {100 / len(VALUES[relation]):7.1f}  {sets}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(TINY_SPECS))
    parser.add_argument("--cache-root", default=None)
    parser.add_argument(
        "--report",
        action="store_true",
        help="also print what the model knows of the held-out facts, per relation",
    )
    args = parser.parse_args()
    path = ensure_tiny_model(args.name, args.cache_root)
    print(path)
    if args.report:
        print(knowledge_table(path))


if __name__ == "__main__":
    main()
