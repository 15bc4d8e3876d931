"""Parameter accounting on the full-size configs, built offline on the meta device from conf/model/*.yaml.

The expected numbers are the paper's, as tabled in docs/method.md ("Counting parameters")."""

from __future__ import annotations

import pytest

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.counting import count_parameters
from perft_exp.adapters.model import apply_adapters
from perft_exp.config import compose
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
    cfg = compose([f"model={model_name}"])
    return apply_adapters(build_meta_model(cfg.model), perft)


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
