"""The variant registry (perft_exp/adapters/variants.py): one spec per variant, the config files agree with
it, and the run names and labels it derives are the paper's (and those of earlier versions)."""

from __future__ import annotations

import pytest
import yaml

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.variants import FIGURE_ORDER, REGISTRY, VARIANTS, run_label, variant_label
from perft_exp.config import CONF_DIR, compose, perft_config, run_tag


def test_the_registry_and_conf_variant_are_one_list():
    """Registry key == YAML file name == its `variant:` value (the routing presets are not variants)."""
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF_DIR / "variant").glob("*.yaml")}
    assert set(files) == set(REGISTRY)
    assert all(conf["variant"] == name for name, conf in files.items())
    assert set(FIGURE_ORDER) == set(VARIANTS) and FIGURE_ORDER[0] == "none"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_variant_composes_and_validates(name):
    perft = perft_config(compose([f"variant={name}"]))
    assert perft.spec is REGISTRY[name]
    n, k = perft.spec.routing_numbers(perft.to_dict())
    assert (n is None) == (perft.spec.routing is None or bool(perft.spec.from_model))


@pytest.mark.parametrize(
    "perft, tag, label",
    [
        (dict(variant="R", num_experts=4, top_k=2), "R-n4-k2-r16", "R (Top2/4) r16"),
        (dict(variant="E", num_experts=None, top_k=None), "E-r16", "E r16"),
        (dict(variant="D", num_experts=4, top_k=None), "D-n4-r16", "D (4) r16"),
        (dict(variant="S", num_experts=None, top_k=None), "S-r16", "S (1) r16"),
        (dict(variant="qv_lora", num_experts=None, top_k=None), "qv_lora-r16", "qv-LoRA r16"),
        (
            dict(variant="router_expert_lora", num_experts=None, top_k=None),
            "router_expert_lora-r16",
            "router+expert-LoRA r16",
        ),
        (dict(variant="none", num_experts=None, top_k=None), "none", "base model"),
        (
            dict(
                variant="R",
                num_experts=8,
                top_k=2,
                alpha=8.0,
                form="adapter",
                init="zero_b",
                authors_weighting_defect=True,
            ),
            "R-n8-k2-r16-a8-adapter-zero_b-defect",
            "R (Top2/8) [alpha=8, adapter, init=zero_b, authors' defect] r16",
        ),
        (dict(variant="S", num_experts=None, top_k=None, alpha=32.0), "S-r16", "S (1) r16"),
        (
            dict(
                variant="R",
                num_experts=4,
                top_k=2,
                dropout_scope="shared",
                router_init="authors",
                router_dtype="model",
            ),
            "R-n4-k2-r16-drop_shared-rinit_authors-rdtype_model",
            "R (Top2/4) [shared dropout, router init=authors, router dtype=model] r16",
        ),
        # A LoRA baseline takes the rank and alpha only:
        # the PEFT experts' form and init are neither run nor named.
        (
            dict(variant="qv_lora", num_experts=None, top_k=None, alpha=8.0, form="adapter", init="zero_b"),
            "qv_lora-r16-a8",
            "qv-LoRA [alpha=8] r16",
        ),
    ],
)
def test_run_names_and_labels(perft, tag, label):
    cfg = PerftConfig(**perft)
    assert run_tag(cfg.to_dict()) == tag and run_tag(cfg.to_dict(), seed=3) == f"{tag}-s3"
    assert cfg.run_label() == label == run_label(cfg.to_dict())


def test_a_lora_baseline_resets_what_only_the_peft_experts_take():
    """A model config may set the PEFT experts' form (the tiny models: adapter); a baseline's saved config,
    name and label still say what HF PEFT's LoRA ran, whether the dict went through PerftConfig or not."""
    raw = dict(
        variant="expert_lora",
        num_experts=None,
        top_k=None,
        bottleneck=8,
        form="adapter",
        dropout_scope="shared",
        router_init="authors",
    )
    cfg = PerftConfig(**raw)
    assert (cfg.form, cfg.dropout_scope, cfg.router_init) == ("lora", "expert", "linear")
    assert run_tag(raw) == run_tag(cfg.to_dict()) == "expert_lora-r8"
    assert run_label(raw) == cfg.run_label() == "expert-LoRA r8"


def test_E_is_labelled_with_the_base_models_routing_once_known():
    unresolved = PerftConfig(variant="E", num_experts=None, top_k=None).to_dict()
    assert variant_label(unresolved) == "E" and variant_label(unresolved, 8, 64) == "E (Top8/64)"
    assert variant_label({**unresolved, "num_experts": 64, "top_k": 8}) == "E (Top8/64)"


def test_an_unknown_variant_is_labelled_by_its_name():
    """Results written by another version may name a variant this one lacks: tables still list them."""
    assert variant_label({"variant": "X2", "bottleneck": 8}) == "X2"


def test_knobs_that_apply_to_one_variant_are_refused_elsewhere():
    with pytest.raises(ValueError, match="authors_weighting_defect applies to variant R only"):
        PerftConfig(variant="D", num_experts=4, top_k=None, authors_weighting_defect=True)
    with pytest.raises(ValueError, match="S has one expert"):
        PerftConfig(variant="S", num_experts=2, top_k=None)


def test_resolve_fills_the_model_dependent_defaults_once():
    """E's N and K are the base model's and a null aux coefficient the architecture's: filled by resolve
    (which apply_adapters runs), so what is saved and labelled holds numbers, and the dict round-trips."""
    from moe_models import tiny_moe

    from perft_exp.adapters.model import apply_adapters
    from perft_exp.models.arch import get_architecture

    model = tiny_moe("olmoe")
    arch = get_architecture(model.config.model_type)
    composed = PerftConfig(variant="E", num_experts=None, top_k=None, bottleneck=4)
    resolved = composed.resolve(arch, model.config)
    assert (resolved.num_experts, resolved.top_k) == (
        arch.num_experts(model.config),
        arch.top_k(model.config),
    )
    assert resolved.aux_loss_coef == arch.adapter_aux_loss_coef and composed.aux_loss_coef is None
    assert resolved.resolve(arch, model.config) == resolved
    assert PerftConfig.from_dict(resolved.to_dict()) == resolved
    assert PerftConfig(variant="R", aux_loss_coef=0.5).resolve(arch, model.config).aux_loss_coef == 0.5
    built = apply_adapters(model, composed).perft_config
    assert built == resolved and None not in (built.num_experts, built.top_k, built.aux_loss_coef)
    n, k = resolved.spec.routing_numbers(resolved.to_dict())
    assert resolved.display_name() == f"E (Top{k}/{n})"
