"""Tiny local models: built from shrunk specs in seconds, loaded back through from_pretrained, cached."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from perft_exp.data.synthetic.world import RELATIONS
from perft_exp.models.tiny import build as tiny_build
from perft_exp.models.tiny.cache import default_cache_root, ensure_tiny_model
from perft_exp.models.tiny.probes import completion_accuracy, knowledge_table
from perft_exp.models.tiny_spec import TINY_SPECS, TinySpec


def micro(name: str, **overrides: object) -> TinySpec:
    """The registry spec shrunk to a model that builds in about a second."""
    small = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_experts=4,
        vocab_size=600,
        steps=3,
        batch_size=2,
        seq_len=32,
        warmup_steps=1,
        corpus_docs=100,
    )
    spec = TINY_SPECS[name]
    small["num_key_value_heads"] = 1 if spec.num_key_value_heads < spec.num_attention_heads else 2
    small["steps"] = min(spec.steps, small["steps"])  # the random control stays untrained
    return dataclasses.replace(spec, **(small | overrides))


@pytest.fixture(scope="module", params=sorted(TINY_SPECS))
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    name = request.param
    return name, root, ensure_tiny_model(name, cache_root=root, spec=micro(name), progress=False)


def test_round_trips_through_from_pretrained(built):
    name, _, path = built
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    spec = micro(name)
    assert model.config.model_type == spec.arch
    assert model.config.num_local_experts == spec.num_experts
    assert model.config.num_experts_per_tok == spec.num_experts_per_tok
    assert spec.arch == "mixtral" or model.config.norm_topk_prob == spec.norm_topk_prob
    assert model.config.vocab_size == len(tokenizer)
    assert (path / "model.safetensors").exists()
    ids = tokenizer("the glim is red. 12 + 7 = 19")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == model.config.bos_token_id
    assert tokenizer.eos_token_id == model.config.eos_token_id and tokenizer.pad_token_id is not None
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer)) and torch.isfinite(logits).all()


def test_tokenizer_is_lossless_and_splits_digits(built):
    tokenizer = transformers.AutoTokenizer.from_pretrained(built[2])
    text = "Héllo, wörld! ### Response:\n  tabs\tand 1234.50 ✓"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    digits = [t for t in tokenizer.tokenize("x 2048") if any(c.isdigit() for c in t)]
    assert [t.lstrip("Ġ") for t in digits] == ["2", "0", "4", "8"]


def test_build_record(built):
    name, _, path = built
    build = json.loads((path / "perft_build.json").read_text())
    assert build["spec"] == dataclasses.asdict(micro(name)) and build["key"] == micro(name).key()
    if build["spec"]["steps"]:
        assert build["pretrain_loss_final"] < build["pretrain_loss_first"]
    else:
        assert build["pretrain_tokens"] == 0 and build["pretrain_loss_final"] is None
    for key in (
        "fact_recall",
        "fact_recall_test",
        "question_recall_train",
        "question_recall_test",
        "exam_recall_train",
        "exam_recall_test",
        "arithmetic_recall",
    ):
        assert 0.0 <= build[key] <= 1.0, key
    # Per relation, held-out facts: every relation, each a share.
    assert set(build["by_relation"]) == set(RELATIONS)
    for relation, scores in build["by_relation"].items():
        assert set(scores) == {"fact_recall_test", "question_recall_test", "exam_recall_test"}, relation
        assert all(0.0 <= v <= 1.0 for v in scores.values()), relation
    assert build["seconds"]["total"] > 0


def test_completion_accuracy_reads_the_number_the_model_writes_first(built):
    """A stand-in model that continues every prompt with a fixed text: " 12." counts for 12, not for 1."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(built[2])

    class Writes:
        device = torch.device("cpu")

        def __init__(self, text: str) -> None:
            self.ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

        def generate(self, input_ids, max_new_tokens, **kwargs):
            new = self.ids[:, :max_new_tokens].expand(len(input_ids), -1)
            return torch.cat([input_ids, new], dim=1)

    probes = [("7 + 5 =", 12), ("3 * 4 =", 12), ("6 - 5 =", 1), ("1 + 1 + 9 =", 11)]
    side = tokenizer.padding_side
    assert completion_accuracy(Writes(" 12. 1"), tokenizer, probes) == 0.5
    assert completion_accuracy(Writes(" 1"), tokenizer, probes) == 0.25
    assert completion_accuracy(Writes(" twelve"), tokenizer, probes) == 0.0
    assert tokenizer.padding_side == side  # restored


def test_random_control_is_tiny_olmoe_without_pretraining(tmp_path):
    """Same architecture, tokenizer and initial weights as tiny_olmoe; only the pre-training is skipped."""
    assert TINY_SPECS["tiny_olmoe_random"] == dataclasses.replace(TINY_SPECS["tiny_olmoe"], steps=0)
    pretrained = ensure_tiny_model(
        "tiny_olmoe", cache_root=tmp_path, spec=micro("tiny_olmoe"), progress=False
    )
    random_ = ensure_tiny_model(
        "tiny_olmoe_random", cache_root=tmp_path, spec=micro("tiny_olmoe_random"), progress=False
    )
    assert (pretrained / "tokenizer.json").read_text() == (random_ / "tokenizer.json").read_text()
    tokenizer = transformers.AutoTokenizer.from_pretrained(random_)
    torch.manual_seed(micro("tiny_olmoe_random").seed)
    fresh = transformers.AutoModelForCausalLM.from_config(
        tiny_build.build_config(micro("tiny_olmoe_random"), tokenizer)
    )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(random_)
    for (name, a), b in zip(fresh.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_cache_is_reused_and_keyed_by_spec(built, monkeypatch):
    name, root, path = built

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny_build, "build_tiny_model", no_rebuild)
    assert ensure_tiny_model(name, cache_root=root, spec=micro(name)) == path
    changed = micro(name, seed=1)
    assert changed.key() != micro(name).key()
    with pytest.raises(AssertionError, match="rebuilt"):
        ensure_tiny_model(name, cache_root=root, spec=changed)
    # The interrupted build left nothing behind: no half model, no temp dir (lock files aside).
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [path.name]


def test_concurrent_callers_build_once(tmp_path):
    """Two processes asking for the same uncached model: one builds, the other waits and reuses it."""
    code = (
        "import dataclasses, json, sys; from perft_exp.models.tiny.cache import ensure_tiny_model; "
        "from perft_exp.models.tiny_spec import TinySpec; spec = TinySpec(**json.loads(sys.argv[2])); "
        "print(ensure_tiny_model('tiny_olmoe', cache_root=sys.argv[1], spec=spec, progress=False))"
    )
    spec = json.dumps(dataclasses.asdict(micro("tiny_olmoe")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), spec], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [Path(outs[0]).name]


def test_stale_temp_dir_of_a_killed_build_is_removed(tmp_path):
    spec = micro("tiny_olmoe")
    stale = tmp_path / f".tiny_olmoe-{spec.key()}.tmp-killed"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    path = ensure_tiny_model("tiny_olmoe", cache_root=tmp_path, spec=spec, progress=False)
    assert not stale.exists() and (path / "perft_build.json").exists()


def test_cache_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PERFT_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path


def test_knowledge_table_reports_every_relation_with_its_chance_and_sets(built):
    _, _, path = built
    lines = knowledge_table(path).splitlines()
    assert lines[0].split() == ["relation", "stored", "Q/A", "exam", "chance", "asked", "by"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(RELATIONS)
    assert rows["room"].split()[4] == "20.0" and rows["room"].endswith("ARC-Challenge")
    assert rows["weight"].endswith("boolq, piqa") and rows["color"].endswith("openbookqa")
    for line in lines[1:]:
        assert all(0.0 <= float(v) <= 100.0 for v in line.split()[1:5]), line


def test_the_demos_model_ships_and_is_used_without_building(tmp_path, monkeypatch):
    """tiny_olmoe's build of the current spec ships with the code (perft_exp/models/tiny/shipped/): an empty
    cache does not build it, so every machine starts from the same weights. A changed spec would miss it."""
    import hashlib

    from perft_exp.models.tiny.cache import SHIPPED_ROOT

    def no_build(*args, **kwargs):
        raise AssertionError("built a model that ships")

    monkeypatch.setattr(tiny_build, "build_tiny_model", no_build)
    monkeypatch.setenv("PERFT_CACHE", str(tmp_path / "cold"))
    spec = TINY_SPECS["tiny_olmoe"]
    path = ensure_tiny_model("tiny_olmoe")
    assert path == SHIPPED_ROOT / f"tiny_olmoe-{spec.key()}" and not (tmp_path / "cold").exists()
    record = json.loads((path / "perft_build.json").read_text())
    assert record["key"] == spec.key() and record["spec"] == dataclasses.asdict(spec)
    # the bits the README's base column was measured on
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == "7c47f7e84da3d0e08d469e676e195181eeeacd67abed32eedefc10260919c7f4"
    with pytest.raises(AssertionError, match="built a model that ships"):
        ensure_tiny_model("tiny_olmoe", build_locally=True)  # asked to: the build code still runs
