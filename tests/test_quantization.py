"""The 4-bit frozen base (perft_exp/models/quantization.py): the fused experts quantised while loading, PERFT
training on top, adapters moving between a 4-bit and a full-precision base, bytes on meta and as loaded.

The OLMoE here is sized for bitsandbytes' CPU Linear4bit (in_features >= its 64-weight block, out_features a
multiple of 32), saved in the hub's layout and loaded with `from_pretrained`, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
from moe_models import batch, moe_families, tiny_family

from perft_exp.adapters.config import PerftConfig
from perft_exp.models.arch import architecture_for, find_moe_blocks

pytest.importorskip("bitsandbytes")

from perft_exp.models.quantization import (  # noqa: E402 - after the skip
    BLOCKSIZE,
    MoEBitsAndBytesConfig,
    expert_tensors,
    four_bit_bytes,
    is_quantized_expert,
    predicted_weight_bytes,
    quantize_experts_,
    weight_bytes,
)

F32 = MoEBitsAndBytesConfig(bnb_4bit_compute_dtype=torch.float32)


def _olmoe_config(**kw) -> transformers.OlmoeConfig:
    return transformers.OlmoeConfig(
        **{
            "vocab_size": 128,
            "hidden_size": 64,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def olmoe_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_olmoe_config()).float()
    path = tmp_path_factory.mktemp("olmoe4")
    model.save_pretrained(path)
    return path


def _load(path, quant=F32):
    kwargs = {"quantization_config": quant} if quant is not None else {}
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


@pytest.fixture(scope="module")
def loaded(olmoe_dir):
    """(full-precision model, 4-bit model), loaded once; tests that change them take copies."""
    return _load(olmoe_dir, None), _load(olmoe_dir)


def _inputs():
    return batch(b=2, t=9)


def test_from_pretrained_quantises_the_experts_and_the_linear_layers_not_the_routers(loaded):
    import bitsandbytes as bnb

    full, quant = loaded
    arch = architecture_for(quant)
    for _, block in find_moe_blocks(quant, arch):
        experts = arch.experts(block)
        assert all(is_quantized_expert(experts, attr) for attr in arch.expert_params)
        # the dequantised tensor keeps the expert's shape and dtype: every experts kernel reads it unchanged
        assert experts.gate_up_proj.shape == (8, 128, 64) and experts.gate_up_proj.dtype == torch.float32
        assert arch.router(block).weight.dtype == torch.float32  # the router stays as it was
    assert isinstance(quant.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not isinstance(quant.lm_head, bnb.nn.Linear4bit)
    assert quant.is_loaded_in_4bit and type(quant.hf_quantizer).__name__ == "MoEBnb4BitQuantizer"
    # NF4 of random weights: close to the full-precision model, not equal to it
    with torch.no_grad():
        a, b = full(**_inputs()).logits, quant(**_inputs()).logits
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.3, rel


def test_weight_bytes_as_loaded_equal_the_prediction_on_meta(olmoe_dir):
    """Measured right after loading: bitsandbytes' CPU kernels repack a Linear4bit weight on first use."""
    single = MoEBitsAndBytesConfig(bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype=torch.float32)
    for cfg in (F32, single):
        model = _load(olmoe_dir, cfg)
        with torch.device("meta"):
            meta = transformers.AutoModelForCausalLM.from_config(_olmoe_config(), dtype=torch.float32)
        assert weight_bytes(model) == predicted_weight_bytes(meta, cfg)


def test_the_experts_take_under_a_third_of_their_16_bit_bytes(loaded):
    full, quant = loaded
    experts = [t for _, m, a in expert_tensors(full) for t in [getattr(m, a)]]
    bf16 = sum(t.numel() * 2 for t in experts)
    held = sum(four_bit_bytes(t.numel(), True) for t in experts)
    assert held <= 0.30 * bf16, held / bf16
    assert four_bit_bytes(BLOCKSIZE * 256, True) == BLOCKSIZE * 128 + 16 * 4 + 256 + 4 + 256 * 4 + 4


@pytest.mark.parametrize(
    "spec",
    [
        dict(variant="R", num_experts=4, top_k=2),
        dict(variant="E"),
        dict(variant="E", impl="fused"),
        dict(variant="D", num_experts=2),
        dict(variant="S"),
        dict(variant="R", num_experts=4, top_k=2, top_p=0.5),
    ],
    ids=["R", "E", "E-fused", "D", "S", "top-p"],
)
def test_perft_trains_on_the_4bit_base_through_get_peft_model(olmoe_dir, spec):
    from peft import get_peft_model

    import perft_exp

    model = get_peft_model(_load(olmoe_dir), perft_exp.PerftConfig(bottleneck=4, **spec))
    _train_steps(model)


def test_qlora_trains_and_lora_on_4bit_experts_is_refused_in_one_line(olmoe_dir):
    from perft_exp.adapters.baselines import apply_lora_baseline
    from perft_exp.models.arch import NotApplicable

    _train_steps(apply_lora_baseline(_load(olmoe_dir), PerftConfig(variant="qv_lora", bottleneck=4)))
    for variant in ("expert_lora", "router_expert_lora"):
        with pytest.raises(NotApplicable, match="4-bit base") as e:
            apply_lora_baseline(_load(olmoe_dir), PerftConfig(variant=variant, bottleneck=4))
        assert "\n" not in str(e.value)


def _train_steps(model, steps: int = 3) -> None:
    """A few SGD steps on one batch: the loss goes down, every adapter tensor gets a gradient, nothing frozen
    moves (the 4-bit tensors included)."""
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    inputs = _inputs()
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        assert all(p.grad is not None for p in trainable)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"


def test_an_adapter_moves_between_the_4bit_and_the_full_precision_base(olmoe_dir, tmp_path):
    from peft import PeftModel, get_peft_model

    import perft_exp

    inputs = _inputs()
    trained = get_peft_model(_load(olmoe_dir), perft_exp.PerftConfig(variant="E", bottleneck=4))
    _train_steps(trained)
    trained.save_pretrained(tmp_path / "on4bit")
    saved = json.loads((tmp_path / "on4bit" / "adapter_config.json").read_text())
    assert saved["base_quantization"]["bits"] == 4 and saved["base_quantization"]["quant_type"] == "nf4"

    for base, quant in (("full", None), ("4bit", F32)):
        model = PeftModel.from_pretrained(_load(olmoe_dir, quant), tmp_path / "on4bit").eval()
        state = {k: v for k, v in model.state_dict().items() if ".perft" in k}
        ref = {k: v for k, v in trained.state_dict().items() if ".perft" in k}
        assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref), base
        with torch.no_grad():
            on, off = model(**inputs).logits, None
            with model.disable_adapter():
                off = model(**inputs).logits
        assert not torch.allclose(on, off), base  # the loaded adapter acts on this base

    # ... and the other way round: trained on the full-precision base, loaded on the 4-bit one
    full = get_peft_model(_load(olmoe_dir, None), perft_exp.PerftConfig(variant="R", bottleneck=4))
    full.save_pretrained(tmp_path / "onfull")
    assert json.loads((tmp_path / "onfull" / "adapter_config.json").read_text())["base_quantization"] is None
    PeftModel.from_pretrained(_load(olmoe_dir), tmp_path / "onfull")


def test_config_refuses_8bit_and_expert_lora_on_4bit_in_one_line():
    from perft_exp.config import ConfigError, compose_spec

    for overrides, match in (
        (["model.quantization=8bit"], "8bit is refused"),
        (["model.quantization=4bit", "variant=expert_lora"], "4-bit experts are packed"),
    ):
        with pytest.raises((ConfigError, ValueError), match=match) as e:
            compose_spec(overrides)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="8-bit"):
        MoEBitsAndBytesConfig(load_in_8bit=True)
    spec = compose_spec(["model.quantization=4bit"])
    assert spec.model.gradient_checkpointing and spec.model.quant_type == "nf4" and spec.model.double_quant
    assert not compose_spec([]).model.gradient_checkpointing


# --- every family: R and E over 4-bit experts -------------------------------------------------------------
# The family battery's tiny models are 32 wide, under bitsandbytes' CPU Linear4bit minimum, so here only the
# expert tensors (the new part) are quantised, in place; the Linear layers' path is transformers' own,
# exercised above through from_pretrained. No family is skipped.
from test_families import FAMILIES, VARIANTS  # noqa: E402


@pytest.mark.parametrize("model_type", FAMILIES)
def test_R_and_E_train_over_4bit_experts_on_every_family(model_type):
    from perft_exp.adapters.model import adapters_disabled, apply_adapters

    base = quantize_experts_(tiny_family(model_type), MoEBitsAndBytesConfig(bnb_4bit_compute_dtype=None))
    assert all(is_quantized_expert(m, a) for _, m, a in expert_tensors(base))
    inputs = batch()
    with torch.no_grad():
        reference = base(**inputs).logits
    for spec in (VARIANTS["R"], VARIANTS["E"]):
        model = apply_adapters(quantize_experts_(tiny_family(model_type)), PerftConfig(bottleneck=4, **spec))
        with torch.no_grad(), adapters_disabled(model):
            torch.testing.assert_close(model(**inputs).logits, reference)
        model.train()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), f"{model_type} {spec['variant']}"


def test_every_family_s_expert_weights_are_found_for_quantisation():
    """Fused 3-D tensors everywhere but DBRX (2-D stacks, `experts.mlp.w1` (E*I, D)) and nemotron_h (no gate:
    `up_proj`): nothing an MoE family keeps its experts in is left in 16 bits."""
    assert set(FAMILIES) <= set(moe_families())
    for family in FAMILIES:
        names = {n.rsplit(".experts.", 1)[1] for n, _, _ in expert_tensors(tiny_family(family))}
        assert names, family
        assert names <= {"gate_up_proj", "down_proj", "up_proj", "mlp.w1", "mlp.v1", "mlp.w2"}, (
            family,
            names,
        )


# --- loading: the full-precision model is never whole in memory ------------------------------------------

_PEAK = r"""
import json, sys, threading, time, torch, transformers
from perft_exp.models.quantization import MoEBitsAndBytesConfig

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

peak = [anon_kb()]
start = peak[0]
done = threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon_kb()); time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
quant = MoEBitsAndBytesConfig(bnb_4bit_compute_dtype=torch.bfloat16) if sys.argv[2] == "4bit" else None
model = transformers.AutoModelForCausalLM.from_pretrained(
    sys.argv[1], dtype=torch.bfloat16, quantization_config=quant
)
done.set()
peak[0] = max(peak[0], anon_kb())
vmhwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"anon_peak_mb": (peak[0] - start) / 1024, "vmhwm_mb": vmhwm / 1024}))
"""


@pytest.mark.slow
def test_loading_in_4bit_peaks_under_half_the_memory_of_bf16(tmp_path):
    """A 1.1 GB bf16 checkpoint in the hub's layout (Mixtral-style per-expert tensors, two shards; 16 layers,
    as OLMoE-1B-7B has, so one layer's transient is the share of the model it is in real ones): the
    process's own memory (anonymous RSS, sampled while loading) peaks at under half of loading it in bf16.
    The checkpoint's file pages, mapped by safetensors, are page cache and are not counted."""
    config = transformers.MixtralConfig(
        vocab_size=256,
        hidden_size=1024,
        intermediate_size=1280,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_local_experts=8,
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(tmp_path, max_shard_size="700MB")
    size = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert size >= 1e9, size
    del model
    peaks = {}
    for mode in ("bf16", "4bit"):
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(tmp_path), mode], capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(peaks)
    assert peaks["4bit"]["anon_peak_mb"] <= 0.5 * peaks["bf16"]["anon_peak_mb"], peaks


def _count(*overrides: str) -> dict:
    from conftest import REPO

    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "count_params.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_count_params_says_mixtral_8x7b_fits_one_gpu_in_4bit():
    """On meta: the frozen base's bytes under model.quantization, what a user sizes a GPU by."""
    args = ("model=mixtral_8x7b", "model.dtype=bfloat16", "variant=none")
    bf16, four = _count(*args), _count(*args, "model.quantization=4bit")
    assert bf16["base_weight_bytes"] == pytest.approx(2 * bf16["base_total"], rel=1e-6)  # 93.4 GB + buffers
    assert four["base_weight_bytes"] <= 30e9 and four["base_total"] == bf16["base_total"]
    assert four["quantization"] == "4bit"
