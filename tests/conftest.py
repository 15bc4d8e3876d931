"""Shared pytest fixtures. Everything is built offline in seconds; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perft_exp.data.prompts import COMMONSENSE_PREFILL, build_prompt

# --- tiny_tokenizer / tiny_lm: a byte-level BPE and a random 2-layer OLMoE, for evaluation tests ---

_TOKENIZER_CORPUS = [
    build_prompt("Please answer the following question with true or false, question: is water wet?"),
    build_prompt("Please choose the correct answer to the question: Answer1: red Answer2: blue"),
    build_prompt("A train travels 120 km in 2 hours. What is its speed?", "in km/h"),
    f"{COMMONSENSE_PREFILL} true false solution1 solution2 answer1 answer2 answer3 answer4 answer5",
    "ending1 ending2 ending3 ending4 option1 option2 The answer is 1,234.5 or -7 (A) (B) (C) (D) (E)",
]


def build_tiny_tokenizer():
    """A byte-level BPE (any text round-trips) with EOS and pad tokens, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|padding|>")


def build_tiny_lm(tokenizer, seed: int = 0):
    """A random fp32 OLMoE (2 layers, 4 experts, top-2) sized to `tokenizer`, in eval mode."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        # Wider than the default 0.02 so the random logits are decisive and greedy paths vary.
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return OlmoeForCausalLM(config).float().eval()


@pytest.fixture(autouse=True)
def _restore_environment():
    """Tests that run the app in-process set RANK, WORLD_SIZE, MASTER_ADDR, ... in os.environ; without this a
    later test's subprocess (or accelerate) would take itself for one rank of a distributed job.

    A script's main() run in-process may hide optional packages (perft_exp/optional_imports.py marks them
    None in sys.modules): they are visible again for the next test.

    A run in-process sets torch's thread count (trainer.cpu_threads): the next test gets the one from before,
    so no result depends on which tests ran before it in the same worker."""
    saved = dict(os.environ)
    hidden_before = {name for name, module in sys.modules.items() if module is None}
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(saved)
    for name in [name for name, module in sys.modules.items() if module is None]:
        if name not in hidden_before:
            del sys.modules[name]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    return build_tiny_lm(tiny_tokenizer)


# ---- the app through train.py (subprocesses) ----------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory) -> Path:
    """A micro OLMoE (2 layers, hidden 64) with the project's real tokenizer, built in seconds."""
    import dataclasses

    from perft_exp.models.tiny.build import build_tiny_model
    from perft_exp.models.tiny_spec import TINY_SPECS

    spec = dataclasses.replace(
        TINY_SPECS["tiny_olmoe"], hidden_size=64, num_hidden_layers=2, steps=2, corpus_docs=300
    )
    return build_tiny_model(
        "tiny_olmoe", tmp_path_factory.mktemp("micro") / "olmoe", progress=False, spec=spec
    )


@pytest.fixture(scope="session")
def app_env(tmp_path_factory) -> dict:
    """Environment for train.py subprocesses: a private cache, no W&B network, one thread."""
    env = dict(os.environ)
    env.update(
        PERFT_CACHE=str(tmp_path_factory.mktemp("cache")),
        WANDB_MODE="offline",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HYDRA_FULL_ERROR="0",
    )
    for var in ("PERFT_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # single-process runs unless a test launches torchrun itself
    return env


def run_train(args: list[str], env: dict, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


# The longest test files first: `make test` hands whole files to its worker processes in collection order, and
# a long file collected last would run alone at the end (the README's chained blocks, the demo's three
# 600-step runs).
# Serial times on 2 cores: 460 s, 310, 220, 190, 170, 145; the other files take under 65 s each.
_LONGEST_FIRST = (
    "test_readme.py",
    "test_demo.py",
    "test_reliability.py",
    "test_sweeps.py",
    "test_app.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(config, items):
    """Collect the longest files first (stable otherwise)."""

    def rank(item) -> int:
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)
