"""Parameter accounting on the full-size configs, built offline on the meta device from conf/model/*.yaml.

The expected numbers are the paper's, as tabled in docs/method.md ("Counting parameters")."""

from __future__ import annotations

import pytest

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.counting import count_parameters
from perft_exp.adapters.model import apply_adapters
from perft_exp.config import compose, compose_spec
from perft_exp.models.loading import build_meta_model

CASES = [
    # model, perft overrides, trainable, activated trainable
    ("olmoe_1b_7b", dict(variant="qv_lora", num_experts=None, top_k=None), 2_097_152, 2_097_152),
    ("olmoe_1b_7b", dict(variant="S", num_experts=None, top_k=None), 1_048_576, 1_048_576),
    ("olmoe_1b_7b", dict(variant="R", num_experts=4, top_k=2), 4_325_376, 2_228_224),
    ("olmoe_1b_7b", dict(variant="E", num_experts=None, top_k=None), 67_108_864, 8_388_608),
    ("mixtral_8x7b", dict(variant="R", num_experts=8, top_k=2), 34_603_008, None),
]


def _meta(model_name: str, perft: PerftConfig):
    return apply_adapters(build_meta_model(compose_spec([f"model={model_name}"]).model), perft)


@pytest.mark.parametrize("model_name, spec, trainable, activated", CASES)
def test_paper_table(model_name, spec, trainable, activated):
    counts = count_parameters(_meta(model_name, PerftConfig(bottleneck=16, **spec)))
    assert counts.trainable == trainable
    if activated is not None:
        assert counts.activated_trainable == activated


def test_base_counts_match_the_published_sizes():
    olmoe = count_parameters(_meta("olmoe_1b_7b", PerftConfig(variant="none")))
    assert round(olmoe.base_total / 1e9, 2) == 6.92 and round(olmoe.base_active / 1e9, 2) == 1.28
    mixtral = count_parameters(_meta("mixtral_8x7b", PerftConfig(variant="none")))
    assert round(mixtral.base_total / 1e9, 1) == 46.7 and round(mixtral.base_active / 1e9, 1) == 12.9


@pytest.mark.parametrize("model_name", ["qwen2_moe_a2_7b", "qwen3_moe_30b_a3b"])
def test_qwen_families_count(model_name):
    perft = PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=16)
    counts = count_parameters(_meta(model_name, perft))
    cfg = compose([f"model={model_name}"]).model.architecture
    per_layer = 4 * 2 * cfg.hidden_size * 16 + cfg.hidden_size * 4
    assert counts.trainable == cfg.num_hidden_layers * per_layer
    assert counts.activated_trainable == cfg.num_hidden_layers * (
        2 * 2 * cfg.hidden_size * 16 + cfg.hidden_size * 4
    )


def test_expert_lora_counts_only_the_chosen_experts_as_active():
    counts = count_parameters(
        _meta("olmoe_1b_7b", PerftConfig(variant="expert_lora", num_experts=None, top_k=None, bottleneck=4))
    )
    assert counts.activated_trainable * 8 == counts.trainable  # top-8 of 64 experts


# The published sizes of the named models (model cards / tech reports), and how each publisher counts
# "active": "all" = every parameter a token uses; "no_input_embedding" = the embedding table (a lookup) left
# out; "no_embeddings" = input embedding and LM head left out. `digits`: the published number's precision (a
# headline "3B" says 2.5B-3.5B), used where it is coarser than 1 %.
PUBLISHED = {
    # name: (total, active, active convention, active significant digits or None for 1 %)
    "deepseek_v2_lite": (15.7e9, 2.4e9, "no_input_embedding", 2),  # DeepSeek-V2 report: 15.7B / 2.4B
    "moonlight_16b_a3b": (16.0e9, 2.24e9, "no_embeddings", None),  # Moonlight report: 2.24B activated
    "gpt_oss_20b": (20.91e9, 3.61e9, "no_input_embedding", None),  # gpt-oss model card: 20.91B / 3.61B
    "glm45_air": (106e9, 12e9, "no_embeddings", 2),  # GLM-4.5 report: 106B / 12B
    "granite_3_1_3b_a800m": (3.3e9, 0.8e9, "no_embeddings", None),  # Granite 3.1 card: 3.3B / 800M
    "phi35_moe": (41.9e9, 6.6e9, "all", None),  # Phi-3.5-MoE card: 41.9B / 6.6B
    "llama4_scout": (109e9, 17e9, "all", 2),  # Llama 4 card: 109B (with the vision encoder), 17B active
    "qwen3_next_80b_a3b": (80e9, 3e9, "no_embeddings", 1),  # Qwen3-Next card: 80B / 3B (79B non-embedding)
}


def _within(value: float, published: float, digits: int | None) -> bool:
    if digits is None:
        return abs(value - published) <= 0.01 * published
    return float(f"{value:.{digits}g}") == float(f"{published:.{digits}g}")


# DeepSeek-V2-Lite: we count 2.45B active without the embedding table (2.24B without both embeddings, 2.66B
# with them); the report's 2.4B matches none of these at its precision, so its convention is not known.
# Llama-4-Scout: the text model counted here is 107.8B (17.2B active); the card's 109B includes the vision
# encoder, which llama4_text does not build.
UNMATCHED = {
    "deepseek_v2_lite": "published 2.4B active matches no counting convention we know (2.24/2.45/2.66B)",
    "llama4_scout": "text model 107.8B; the published 109B includes the vision encoder",
}


@pytest.mark.parametrize(
    "model_name",
    [
        pytest.param(m, marks=pytest.mark.xfail(reason=UNMATCHED[m], strict=True)) if m in UNMATCHED else m
        for m in sorted(PUBLISHED)
    ],
)
def test_named_models_match_their_published_sizes(model_name):
    total, active, convention, digits = PUBLISHED[model_name]
    model = _meta(model_name, PerftConfig(variant="none"))
    counts = count_parameters(model)
    embed = model.get_input_embeddings().weight.numel()
    head = 0 if model.config.tie_word_embeddings else model.get_output_embeddings().weight.numel()
    left_out = {"all": 0, "no_input_embedding": embed, "no_embeddings": embed + head}[convention]
    assert abs(counts.base_total - total) <= 0.01 * total, (model_name, counts.base_total)
    assert _within(counts.base_active - left_out, active, digits), (model_name, counts.base_active - left_out)
