"""Detection: the MoE facts of a model whose type has no family file, read off its modules and config.

    detect(model)          -> MoEArchitecture (detected=True), or UnsupportedModel saying what was not found
    detect_type("dots1")   -> the same, from a `meta` model of the type's default config (no memory, no files)

What is looked for, in this order:
1. The router: the class transformers records router logits from (`_can_record_outputs["router_logits"]`),
   else a child named `gate` or `router` of a module that also has an `experts` child.
2. The MoE block: the module holding that router and an `experts` child; the experts' parameters whose first
   dimension is the expert count E are the expert tensors (`@use_experts_implementation` says their gate/up
   layout).
3. The config keys: the attribute (top level or one nested config deep) whose value is E and whose name speaks
   of experts; the one whose value is the router's top-k and whose name speaks of top-k / experts per token.
4. The router's output, on a few random tokens: PERFT's E reuses it only when it is
   (logits (T, E), top-k weights (T, k), top-k indices (T, k)).
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

from perft_exp.models.arch.facts import MoEArchitecture, UnsupportedModel

_ROUTER_NAMES = ("gate", "router")
_EXPERTS_NAME = "experts"
# Preferred config keys first; then any int attribute whose name contains one of the fragments.
_NUM_EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_NUM_EXPERTS_FRAGMENTS = ("expert",)
_TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "moe_topk", "moe_k", "top_k")
_TOP_K_FRAGMENTS = ("per_tok", "top_k", "topk")
# Attention projections qv-LoRA targets; MLA (DeepSeek) has no v_proj: its values come out of kv_b_proj.
_QV = (
    ("q_proj", "v_proj"),
    ("q_proj", "kv_b_proj"),
    ("q_b_proj", "kv_b_proj"),
    ("qkv_proj",),
    ("query_key_value",),
    ("Wqkv",),
)


def _recorded_router_class(model: nn.Module) -> str | None:
    recorder = (getattr(model, "_can_record_outputs", None) or {}).get("router_logits")
    if recorder is None or isinstance(recorder, str):
        return recorder
    target = getattr(recorder, "target_class", None) or recorder
    return getattr(target, "__name__", None) or getattr(recorder, "class_name", None)


def _find_block(model: nn.Module) -> tuple[str, nn.Module, str]:
    """(qualified name, first MoE block, the router's attribute name in it)."""
    router_class = _recorded_router_class(model)
    candidates = []
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if _EXPERTS_NAME not in children:
            continue
        for attr in _ROUTER_NAMES:
            if attr in children:
                candidates.append((name, module, attr, type(children[attr]).__name__ == router_class))
    if not candidates:
        raise UnsupportedModel(
            f"{model.config.model_type}: no MoE block found (no module with an `experts` child and a "
            f"`gate`/`router` child{f'; router class {router_class}' if router_class else ''})"
        )
    preferred = [c for c in candidates if c[3]] or candidates
    name, block, attr, _ = preferred[0]
    if any(n in ("self_attn", "attn", "attention") for n, _ in block.named_children()):
        # PERFT sits in parallel with an MoE block:
        # a decoder layer is not one (its input is not the router's).
        raise UnsupportedModel(
            f"{model.config.model_type}: router and experts sit directly in the decoder layer "
            f"{type(block).__name__}, not in an MoE block of their own"
        )
    return name, block, attr


def _config_items(config) -> list[tuple[str, object]]:
    """(key, value) of the config's attributes, and one level into nested configs ("ffn_config.moe_top_k")."""
    items = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            items += [(f"{key}.{k}", v) for k, v in value.items() if not isinstance(v, dict)]
        else:
            items.append((key, value))
    return items


def _find_key(config, value: int, preferred: tuple[str, ...], fragments: tuple[str, ...], what: str) -> str:
    items = [(k, v) for k, v in _config_items(config) if isinstance(v, int) and not isinstance(v, bool)]
    matches = [k for k, v in items if v == value]
    for key in preferred:
        for k in matches:
            if k.rsplit(".", 1)[-1] == key:
                return k
    for k in matches:
        if any(f in k.rsplit(".", 1)[-1] for f in fragments):
            return k
    raise UnsupportedModel(f"{config.model_type}: no config key holds the {what} ({value})")


def _expert_count(experts: nn.Module) -> tuple[int, tuple[str, ...]]:
    """(E, names of the experts' own tensors with E as first dimension, 3-D ones first)."""
    params = dict(experts.named_parameters(recurse=False))
    count = getattr(experts, "num_experts", None)
    if count is None:
        three_d = [p.shape[0] for p in params.values() if p.dim() == 3]
        count = three_d[0] if three_d else None
    if count is None:
        raise UnsupportedModel(f"{type(experts).__name__}: cannot tell its expert count")
    fused = tuple(n for n, p in params.items() if p.dim() == 3 and p.shape[0] == count)
    return int(count), fused


def _gate_up_layout(experts: nn.Module, fused: tuple[str, ...]) -> str:
    if not fused or not fused[0].startswith("gate_up") or not getattr(experts, "has_gate", True):
        return "none"
    transposed = getattr(experts, "is_transposed", False)
    interleaved = not getattr(experts, "is_concatenated", True)
    return {
        (False, False): "concatenated",
        (True, False): "transposed",
        (False, True): "interleaved",
        (True, True): "interleaved_transposed",
    }[(transposed, interleaved)]


def _router_top_k(block: nn.Module, router: nn.Module, config) -> int | None:
    for owner in (router, block):
        for attr in ("top_k", "num_experts_per_tok"):
            value = getattr(owner, attr, None)
            if isinstance(value, int):
                return value
    return None


def check_routing(output, tokens: int, num_experts: int, top_k: int | None, where: str) -> None:
    """Assert `output` is (logits (T, E), weights (T, k), indices (T, k)); UnsupportedModel otherwise."""
    ok = (
        isinstance(output, tuple)
        and len(output) == 3
        and all(isinstance(t, torch.Tensor) for t in output)
        and tuple(output[0].shape) == (tokens, num_experts)
        and output[1].shape == output[2].shape
        and output[1].dim() == 2
        and output[1].shape[0] == tokens
        and not output[2].is_floating_point()
        and (top_k is None or output[1].shape[1] == top_k)
    )
    if not ok:
        shapes = (
            [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in output]
            if isinstance(output, tuple)
            else tuple(output.shape)
            if isinstance(output, torch.Tensor)
            else type(output).__name__
        )
        raise UnsupportedModel(
            f"{where} returns {shapes}, not (logits (T, {num_experts}), top-k weights (T, k), "
            "top-k indices (T, k)); a family file with a router_output converter would support it"
        )


def probe_router(block: nn.Module, router: nn.Module, hidden_size: int, tokens: int = 3):
    """The router's output on a few random tokens, as the block calls it (a forward hook while the block runs
    on (1, tokens, D)); the router alone where the block cannot run so (on `meta`: shapes only)."""
    ref = next(router.parameters(), None)
    ref = ref if ref is not None else next(block.parameters())
    x = torch.randn(1, tokens, hidden_size, device=ref.device, dtype=ref.dtype)
    seen = []
    handle = router.register_forward_hook(lambda module, args, output: seen.append(output))
    was_training = block.training
    block.eval()
    try:
        with torch.no_grad():
            try:
                block(x)
            except Exception:  # noqa: BLE001 - e.g. data-dependent ops on `meta`: the router alone then
                seen.clear()
                try:
                    router(x.view(tokens, hidden_size))
                except Exception as e:  # noqa: BLE001 - reported as the one line detection gives
                    raise UnsupportedModel(
                        f"router {type(router).__name__} does not run on hidden states alone "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                    ) from e
    finally:
        handle.remove()
        block.train(was_training)
    return seen[0]


def _attention_qv(model: nn.Module) -> tuple[str, ...]:
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return next((names for names in _QV if all(n in leaves for n in names)), ())


def detect(model: nn.Module) -> MoEArchitecture:
    """The MoE facts of `model` (an HF causal LM), found from its modules and config."""
    config = model.config
    _, block, router_attr = _find_block(model)
    router, experts = getattr(block, router_attr), getattr(block, _EXPERTS_NAME)
    num_experts, fused = _expert_count(experts)
    top_k = _router_top_k(block, router, config)
    try:
        output = probe_router(block, router, config.hidden_size)
    except UnsupportedModel as e:
        raise UnsupportedModel(f"{config.model_type}: {e}") from None
    if top_k is None and isinstance(output, tuple) and len(output) == 3:
        top_k = int(output[1].shape[-1])
    check_routing(output, 3, num_experts, top_k, f"{config.model_type}: router {type(router).__name__}")
    # The router's (E, D) scoring matrix, wherever the router keeps it (`weight`, `wg.weight`, `gate.weight`).
    router_weight = next(
        (n for n, p in router.named_parameters() if tuple(p.shape) == (num_experts, config.hidden_size)), None
    )
    others = tuple(
        n
        for n, c in block.named_children()
        if n not in (router_attr, _EXPERTS_NAME) and any(True for _ in c.parameters())
    )
    return MoEArchitecture(
        model_type=config.model_type,
        config_class=type(config).__name__,
        block_class=type(block).__name__,
        num_experts_key=_find_key(
            config, num_experts, _NUM_EXPERTS_KEYS, _NUM_EXPERTS_FRAGMENTS, "expert count"
        ),
        top_k_key=_find_key(config, top_k, _TOP_K_KEYS, _TOP_K_FRAGMENTS, "top-k"),
        router_attr=router_attr,
        experts_attr=_EXPERTS_NAME,
        expert_params=fused,
        attention_qv=_attention_qv(model),
        always_active=others,
        router_weight=router_weight,
        gate_up=_gate_up_layout(experts, fused),
        detected=True,
    )


def detect_type(model_type: str) -> MoEArchitecture:
    """Detection on a `meta` model of `model_type`'s default config (full size, no memory)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise UnsupportedModel(
            f"unknown MoE architecture {model_type!r}: transformers has no such model type"
        )
    config = CONFIG_MAPPING[model_type]()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return detect(model)
