"""PERFT as a Hugging Face PEFT method (perft_exp/adapters/tuner.py): every variant on every architecture
through peft's and transformers' own entry points, named adapters, unload, the aux loss in the model's loss,
clear errors, and adapters in the format perft-exp wrote before it used PEFT's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from moe_models import ARCHS, batch, tiny_moe
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from safetensors.torch import load_file

import perft_exp
from perft_exp.adapters.io import AdapterError, convert_old_adapter, load_adapter
from perft_exp.adapters.layer import perft_layers
from perft_exp.adapters.tuner import PerftTunerLayer

VARIANTS = {
    "R": dict(variant="R", num_experts=4, top_k=2),
    "E": dict(variant="E"),
    "D": dict(variant="D", num_experts=3),
    "S": dict(variant="S"),
}
DATA = Path(__file__).parent / "data"


def perft_config(variant: str, **kw) -> perft_exp.PerftConfig:
    return perft_exp.PerftConfig(bottleneck=4, dropout=0.0, **{**VARIANTS[variant], **kw})


def randomised(model, seed: int = 0):
    """Non-trivial adapter tensors (B is ~0 at init), so an adapter visibly changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).logits


def test_import_registers_perft_with_peft():
    import peft.mapping

    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING["PERFT"] is perft_exp.PerftConfig
    assert peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING["PERFT"] == "perft_"
    assert perft_exp.PerftConfig(variant="R").peft_type == "PERFT"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_peft_round_trip(tmp_path, arch, variant, capsys):
    base = tiny_moe(arch)
    ref = logits(base)
    model = randomised(get_peft_model(tiny_moe(arch), perft_config(variant)))
    model.print_trainable_parameters()
    assert "trainable params" in capsys.readouterr().out
    out = logits(model)
    assert not torch.allclose(out, ref)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), ref, atol=0, rtol=0)

    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "PERFT" and meta["variant"] == variant and meta["bottleneck"] == 4
    assert meta["base_signature"]["model_type"] == arch
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert all(
        k.startswith("base_model.model.") and ".perft.perft_layer.experts." in k or ".router." in k
        for k in keys
    ) and not any(".default." in k for k in keys)
    loaded = PeftModel.from_pretrained(tiny_moe(arch), tmp_path)
    torch.testing.assert_close(logits(loaded), out, atol=0, rtol=0)

    with pytest.raises(ValueError, match="cannot be merged") as err:
        model.merge_and_unload()
    assert "\n" not in str(err.value)
    plain = model.unload()
    assert type(plain) is type(base) and not any(isinstance(m, PerftTunerLayer) for m in plain.modules())
    assert plain.state_dict().keys() == base.state_dict().keys()
    torch.testing.assert_close(logits(plain), ref, atol=0, rtol=0)


def test_E_records_what_it_took_from_the_model(tmp_path):
    model = get_peft_model(tiny_moe("olmoe"), perft_config("E"))
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (meta["num_experts"], meta["top_k"]) == (8, 2)  # the tiny OLMoE's 8 experts, top-2
    assert meta["aux_loss_coef"] == 0.01  # the architecture's default, resolved


@pytest.mark.parametrize("arch", ARCHS)
def test_base_model_module_paths_do_not_move(arch):
    base = tiny_moe(arch)
    model = get_peft_model(tiny_moe(arch), perft_config("E"))
    names = {n.removeprefix("base_model.model.") for n, _ in model.named_modules()}
    assert {n for n, _ in base.named_modules()} <= names  # e.g. model.layers.0.mlp.gate stays where it was
    out = model(**batch(), output_router_logits=True)
    assert len(out.router_logits) == base.config.num_hidden_layers


def test_auto_peft_model_and_transformers_load_adapter(tmp_path):
    base_dir, adapter = tmp_path / "base", tmp_path / "adapter"
    tiny_moe("olmoe").save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    model = randomised(get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), perft_config("R")))
    ref = logits(model)
    model.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_dir
    )

    torch.testing.assert_close(logits(AutoPeftModelForCausalLM.from_pretrained(adapter)), ref, atol=0, rtol=0)
    for name in ("default", "other"):  # under another name too: no tensor may keep the saved name in its key
        plain = AutoModelForCausalLM.from_pretrained(base_dir)
        plain.load_adapter(str(adapter), adapter_name=name)
        torch.testing.assert_close(logits(plain.eval()), ref, atol=0, rtol=0)


def test_several_named_adapters(tmp_path):
    model = randomised(get_peft_model(tiny_moe("mixtral"), perft_config("R")), seed=1)
    ref_a = logits(model)
    model.add_adapter("b", perft_config("D"))
    model.set_adapter("b")
    randomised(model, seed=2)  # only b trains now
    ref_b = logits(model)
    assert not torch.allclose(ref_a, ref_b)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model), ref_a, atol=0, rtol=0)

    model.save_pretrained(tmp_path)  # default at the top, b in tmp_path/b
    loaded = PeftModel.from_pretrained(tiny_moe("mixtral"), tmp_path)
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    torch.testing.assert_close(logits(loaded), ref_a, atol=0, rtol=0)
    loaded.set_adapter("b")
    torch.testing.assert_close(logits(loaded), ref_b, atol=0, rtol=0)
    loaded.delete_adapter("b")
    assert all(set(m.perft_layer) == {"default"} for m in loaded.modules() if isinstance(m, PerftTunerLayer))
    torch.testing.assert_close(logits(loaded), ref_a, atol=0, rtol=0)


def test_R_router_loss_is_in_the_models_training_loss():
    model = get_peft_model(tiny_moe("olmoe"), perft_config("R"))
    inputs = {**batch(), "labels": batch()["input_ids"]}
    model.eval()
    with torch.no_grad():
        lm = model(**inputs).loss
    model.train()
    out = model(**inputs)
    coef = model.peft_config["default"].aux_loss_coef
    assert out.perft_aux_loss is not None and out.perft_aux_loss > 0
    torch.testing.assert_close(out.loss, lm + coef * out.perft_aux_loss)
    router = next(perft_layers(model)).router.weight
    assert torch.autograd.grad(out.loss, router)[0].abs().sum() > 0


def test_R_router_loss_is_folded_into_aux_loss_for_trainers_that_add_it_themselves():
    """TRL's GRPO and DPO add `router_aux_loss_coef x out.aux_loss` to a loss of their own: the tuner folds
    R's term in, scaled so that the sum carries exactly aux_loss_coef x R's term."""
    model = get_peft_model(tiny_moe("olmoe"), perft_config("R", aux_loss_coef=0.05)).train()
    out = model(**batch(), output_router_logits=True)  # no labels: the caller computes its own loss
    base_coef = model.get_base_model().config.router_aux_loss_coef
    assert out.perft_aux_loss > 0 and out.base_aux_loss > 0
    torch.testing.assert_close(
        base_coef * out.aux_loss, base_coef * out.base_aux_loss + 0.05 * out.perft_aux_loss
    )
    router = next(perft_layers(model)).router.weight
    assert torch.autograd.grad(out.aux_loss, router)[0].abs().sum() > 0
    plain = model(**batch())  # no router logits asked for: nothing to fold into, nothing changed
    assert "perft_aux_loss" not in plain and "aux_loss" not in plain


def test_the_same_loss_through_perft_trainer_and_the_model(tmp_path, monkeypatch):
    """perft-exp's trainer (loss at label positions, aux added once) and a plain
    `model(**batch).loss` agree."""
    from transformers import TrainingArguments

    from perft_exp.training.trainer import PerftTrainer

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    inputs = {**batch(), "labels": batch()["input_ids"]}
    model = get_peft_model(tiny_moe("olmoe"), perft_config("R")).train()
    plain = model(**inputs, output_router_logits=True).loss.item()
    for on in (True, False):
        args = TrainingArguments(output_dir=str(tmp_path / str(on)), use_cpu=True, report_to=[])
        trainer = PerftTrainer(
            model=model,
            args=args,
            logits_at_labels=on,
            adapter_aux_coef=model.peft_config["default"].aux_loss_coef,
        )
        model.train()
        assert trainer.compute_loss(model, dict(inputs)).item() == pytest.approx(plain, rel=1e-5)


def _assert_untouched(model) -> None:
    assert not any(isinstance(m, PerftTunerLayer) for m in model.modules()), "half-loaded adapter left behind"


def test_other_architecture_or_size_is_refused_in_one_line(tmp_path):
    get_peft_model(tiny_moe("olmoe"), perft_config("R")).save_pretrained(tmp_path)
    for other, named in (
        (tiny_moe("mixtral"), "model_type"),
        (tiny_moe("olmoe", hidden_size=64, num_attention_heads=4), "hidden_size"),
    ):
        with pytest.raises(AdapterError, match=named) as err:
            PeftModel.from_pretrained(other, tmp_path)
        assert "\n" not in str(err.value)
        _assert_untouched(other)


def test_corrupted_adapter_files_are_refused_in_one_line(tmp_path):
    get_peft_model(tiny_moe("olmoe"), perft_config("S")).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-40])
    base = tiny_moe("olmoe")
    with pytest.raises(AdapterError, match="truncated or corrupted") as err:
        PeftModel.from_pretrained(base, tmp_path)
    assert "\n" not in str(err.value)
    _assert_untouched(base)
    weights.write_bytes(good)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "PER')
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_adapter(tiny_moe("olmoe"), tmp_path)


def test_a_tensor_of_the_wrong_shape_leaves_nothing_attached(tmp_path):
    get_peft_model(tiny_moe("olmoe"), perft_config("R")).save_pretrained(tmp_path)
    from safetensors.torch import save_file

    state = load_file(tmp_path / "adapter_model.safetensors")
    key = next(k for k in state if k.endswith("experts.A"))
    state[key] = state[key][:, :, :2].contiguous()
    save_file(state, tmp_path / "adapter_model.safetensors")
    base = tiny_moe("olmoe")
    with pytest.raises(AdapterError, match="has shape"):
        PeftModel.from_pretrained(base, tmp_path)
    _assert_untouched(base)


def test_without_the_startup_line_peft_names_the_missing_method(tmp_path):
    """Where perft-exp is importable but not installed (no `_perft_exp.pth`: its finder is taken off here) and
    nothing imports perft_exp, peft does not know PERFT, and its error names the type (docs/peft.md)."""
    from test_registration import NO_STARTUP_HOOK

    get_peft_model(tiny_moe("olmoe"), perft_config("S")).save_pretrained(tmp_path)
    code = f"{NO_STARTUP_HOOK}\nfrom peft import PeftConfig; PeftConfig.from_pretrained({str(tmp_path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "KeyError: 'PERFT'"


# The stored reference logits were computed in another process: its thread count changes the order of float
# sums (differences of about 1e-7). An adapter tensor that failed to load moves the logits far more (checked).
REFERENCE_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("variant", ["R", "qv_lora"])
def test_old_format_adapters_still_load(tmp_path, variant):
    """Directories written by perft-exp before it used PEFT's format (generated by that version, stored)."""
    old = DATA / f"old_format_adapter_{variant}"
    ref = load_file(old / "reference_logits.safetensors")["logits"]
    assert not torch.allclose(logits(tiny_moe("olmoe")), ref, **REFERENCE_TOL), "the adapter changes nothing"
    torch.testing.assert_close(logits(load_adapter(tiny_moe("olmoe"), old)), ref, **REFERENCE_TOL)
    new = convert_old_adapter(old, tmp_path / "new")
    torch.testing.assert_close(
        logits(PeftModel.from_pretrained(tiny_moe("olmoe"), new)), ref, **REFERENCE_TOL
    )


def test_an_old_format_checkpoint_resumes_into_the_peft_model():
    """A run begun before PEFT's format resumes from its checkpoint
    (the trainer loads it with load_weights)."""
    from perft_exp.adapters.config import PerftConfig
    from perft_exp.adapters.io import load_weights
    from perft_exp.adapters.model import apply_adapters

    old = DATA / "old_format_adapter_R"
    model = apply_adapters(
        tiny_moe("olmoe"), PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=4, dropout=0.0)
    )
    load_weights(model, old)
    ref = load_file(old / "reference_logits.safetensors")["logits"]
    torch.testing.assert_close(logits(model.eval()), ref, **REFERENCE_TOL)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_hydra_perft_group_and_the_peft_config_are_one_list_of_knobs(variant):
    """Every key `train.py` composes under `perft.` is a field of perft_exp.PerftConfig (inherited, not
    copied), and a composed config becomes the same PEFT config."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from perft_exp.adapters.config import PerftConfig as Knobs
    from perft_exp.adapters.tuner import PerftPeftConfig
    from perft_exp.config import compose, perft_config

    assert issubclass(perft_exp.PerftConfig, Knobs)
    assert {f.name for f in fields(Knobs)} <= {f.name for f in fields(perft_exp.PerftConfig)}
    cfg = compose([f"variant={variant}"])
    assert set(OmegaConf.to_container(cfg.perft)) <= {f.name for f in fields(Knobs)}
    knobs = perft_config(cfg)
    assert PerftPeftConfig.from_knobs(knobs).knobs() == knobs
