"""A 4-bit frozen MoE base (QLoRA for PERFT): bitsandbytes NF4 for the nn.Linear layers *and* the fused
experts.

transformers' own bitsandbytes quantizer replaces nn.Linear layers only. In transformers 5 every MoE family
keeps its experts as fused 3-D parameters (`experts.gate_up_proj` (E, 2I, D), `experts.down_proj` (E, D,
I)), which hold over 90 % of an MoE model's weights, so the stock "4-bit" model keeps almost all of its
bytes. Here the stock quantizer is extended, through transformers' own extension point
(`register_quantizer`), so that the experts' tensors are quantised too, one tensor at a time while the
checkpoint loads:

    from transformers import AutoModelForCausalLM
    from perft_exp import MoEBitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=MoEBitsAndBytesConfig())

`MoEBitsAndBytesConfig` is transformers' `BitsAndBytesConfig` (4-bit NF4 with double quantisation by
default) under its own `quant_method`; `train.py model.quantization=4bit` loads with exactly this. An expert
tensor is stored as bitsandbytes' packed 4-bit data and dequantised on access through a
`torch.nn.utils.parametrize` parametrization (`bitsandbytes.nn.parametrize.replace_parameter_4bit`), so
every experts kernel (eager loop, grouped_mm, batched_mm) of every family reads it unchanged, once per block
forward (the parametrization's cache is on while the experts module runs).

What stays unquantised, and why:
- the routers: their logits pick the experts, and PERFT-E copies those choices and weights; a 4-bit router
  would change which experts every token reaches;
- embeddings, `lm_head` (transformers' default skips), norms and biases: small, and sensitive;
- non-fused expert lists are nn.Linear layers and are quantised as such.

Training on top: the dequantised expert tensors are frozen constants, but autograd keeps each block's until
the backward pass (they are inputs of the expert matmuls). With gradient checkpointing (on by default with
`model.quantization=4bit`) only the block being recomputed holds them; without it the training peak holds
every block's dequantised experts. docs/benchmarks.md measures both.

8-bit: bitsandbytes quantises arbitrary parameters to 4 bits only, so an 8-bit MoE model would keep its
experts in 16 bits (a 2 % saving); it is refused, with the reason (perft_exp.checks.EIGHT_BIT_REFUSAL)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import torch
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer

from perft_exp.checks import EIGHT_BIT_REFUSAL
from perft_exp.models.arch import UnsupportedModel, architecture_for, find_moe_blocks

QUANT_METHOD = "perft_moe_bnb"
BLOCKSIZE = 64  # bitsandbytes' 4-bit block (weights per absmax scale)
_NESTED_BLOCKSIZE = 256  # double quantisation: absmax scales per second-level scale


def expert_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(qualified name, owning module, attribute) of every expert weight tensor of `model` that is not an
    nn.Linear layer's: the fused 3-D tensors of transformers 5 (`experts.gate_up_proj` (E, 2I, D)) and 2-D
    stacks such as DBRX's (`experts.mlp.w1` (E*I, D)). Biases stay out (small, and added as they are).

    Asks the family's facts (perft_exp/models/arch) where the experts live; a model with no MoE block has
    none. Works on a `meta` model and on one already quantised (the tensor is then a parametrization's
    original)."""
    try:
        arch = architecture_for(model)
    except UnsupportedModel:
        return
    for block_name, block in find_moe_blocks(model, arch):
        for sub_name, module in arch.experts(block).named_modules():
            if isinstance(module, nn.Linear):  # quantised as a Linear layer
                continue
            prefix = ".".join(p for p in (block_name, arch.experts_attr, sub_name) if p)
            quantized = list(getattr(module, "parametrizations", None) or {})
            plain = [
                attr
                for attr, p in module._parameters.items()
                if p is not None and p.ndim >= 2 and "bias" not in attr and p.is_floating_point()
            ]
            for attr in [*quantized, *plain]:
                if attr in quantized and not is_quantized_expert(module, attr):
                    continue  # another parametrization (not ours): left alone
                yield f"{prefix}.{attr}", module, attr


def router_modules(model: nn.Module) -> list[str]:
    """Qualified names of the MoE routers (never quantised: their choices are what E copies)."""
    try:
        arch = architecture_for(model)
    except UnsupportedModel:
        return []
    return [f"{name}.{arch.router_attr}" for name, _ in find_moe_blocks(model, arch)]


def is_quantized_expert(module: nn.Module, attr: str) -> bool:
    """Whether `module.<attr>` is held in 4 bits (a bitsandbytes parametrization)."""
    return nn.utils.parametrize.is_parametrized(module, attr) and any(
        hasattr(p, "quant_state") for p in module.parametrizations[attr]
    )


def quantize_expert_(module: nn.Module, attr: str, value: torch.Tensor, config: BitsAndBytesConfig) -> None:
    """Store `value` as `module.<attr>` in 4 bits (NF4/FP4 per `config`), dequantised on access to the dtype
    it came in (the family's experts kernel multiplies it with hidden states of that dtype;
    bnb_4bit_compute_dtype is the Linear4bit layers')."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit_prequantized

    packed, state = quantize_4bit(
        value, quant_type=config.bnb_4bit_quant_type, double_quant=config.bnb_4bit_use_double_quant
    )
    setattr(module, attr, nn.Parameter(packed, requires_grad=False))
    replace_parameter_4bit_prequantized(module, attr, state.as_dict(packed=True), packed.device)


CHUNK = 1 << 20  # weights quantised at a time (a multiple of every block size)


def quantize_4bit(
    tensor: torch.Tensor, quant_type: str = "nf4", double_quant: bool = True, chunk: int = CHUNK
):
    """bitsandbytes' `functional.quantize_4bit`, bit for bit, a `chunk` of weights at a time.

    bitsandbytes' CPU kernel holds about seven float32-sized copies of its input at once (800 MB for a 112 MB
    bf16 expert tensor); the blocks are independent, so quantising them a chunk at a time gives the same
    packed data and scales with a transient of one chunk. The scales' own (double) quantisation then runs
    on all of them, as in bitsandbytes. Returns (packed (ceil(n/2), 1) uint8, QuantState)."""
    import bitsandbytes.functional as F

    flat = tensor.reshape(-1)
    packed, absmax = [], []
    for start in range(0, flat.numel(), chunk):
        p, a = torch.ops.bitsandbytes.quantize_4bit.default(
            flat[start : start + chunk], BLOCKSIZE, quant_type, torch.uint8
        )
        packed.append(p)
        absmax.append(a)
    packed, absmax = torch.cat(packed), torch.cat(absmax)
    code = F.get_4bit_type(quant_type, device=tensor.device)
    kwargs = dict(
        shape=tensor.shape, dtype=tensor.dtype, blocksize=BLOCKSIZE, code=code, quant_type=quant_type
    )
    if not double_quant:
        return packed, F.QuantState(absmax=absmax, **kwargs)
    offset = absmax.mean()
    qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=_NESTED_BLOCKSIZE)
    return packed, F.QuantState(absmax=qabsmax, offset=offset, state2=state2, **kwargs)


def quantize_experts_(model: nn.Module, config: BitsAndBytesConfig | None = None) -> nn.Module:
    """Quantise an in-memory model's fused expert tensors to 4 bits in place (its nn.Linear layers stay as
    they are); returns the model. For a model built with `from_config` (tests, benchmarks); a checkpoint
    loads quantised with `from_pretrained(..., quantization_config=MoEBitsAndBytesConfig())`."""
    config = config or MoEBitsAndBytesConfig()
    for _, module, attr in list(expert_tensors(model)):
        if not is_quantized_expert(module, attr):
            quantize_expert_(module, attr, getattr(module, attr).detach(), config)
    return model


@register_quantization_config(QUANT_METHOD)
class MoEBitsAndBytesConfig(BitsAndBytesConfig):
    """transformers' BitsAndBytesConfig, 4-bit, whose quantizer also quantises the fused MoE experts.

    Defaults: NF4 with double quantisation (QLoRA's), compute dtype bfloat16. Any BitsAndBytesConfig argument
    applies (`bnb_4bit_quant_type="fp4"`, `bnb_4bit_compute_dtype=torch.float32`, `llm_int8_skip_modules`)."""

    def __init__(self, **kwargs):
        if kwargs.get("load_in_8bit"):
            raise ValueError(f"MoEBitsAndBytesConfig(load_in_8bit=True) is refused: {EIGHT_BIT_REFUSAL}")
        kwargs.setdefault("load_in_4bit", True)
        kwargs.setdefault("bnb_4bit_quant_type", "nf4")
        kwargs.setdefault("bnb_4bit_use_double_quant", True)
        kwargs.setdefault("bnb_4bit_compute_dtype", torch.bfloat16)
        kwargs.pop("quant_method", None)
        super().__init__(**kwargs)
        self.quant_method = QUANT_METHOD


def _release_freed_memory() -> None:
    """Hand the freed full-precision tensors' pages back to the OS (glibc's malloc_trim). Without it glibc
    keeps them in its heap between the smaller 4-bit tensors allocated meanwhile, and a CPU load's resident
    memory grows by about twice the 4-bit model. A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _QuantizeOnLoad:
    """transformers' conversion op for quantised parameters: experts through the parametrization, the
    Linear layers' weights through transformers' own bitsandbytes op."""

    def __init__(self, quantizer: MoEBnb4BitQuantizer):
        from transformers.integrations.bitsandbytes import Bnb4bitQuantize

        self.quantizer = quantizer
        self.linear = Bnb4bitQuantize(quantizer)

    def convert(self, input_dict, model=None, missing_keys=None, **kwargs):
        out = {}
        for name in list(input_dict):
            value = input_dict.pop(name)  # the caller's dict: it holds no full-precision copy after this
            value = value[0] if isinstance(value, list) else value
            if name not in self.quantizer.expert_names:
                out.update(self.linear.convert({name: value}, model=model, **kwargs))
                continue
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            quantize_expert_(module, attr, value, self.quantizer.quantization_config)
            # Loaded: transformers' weight initialisation would otherwise dequantise the tensor to re-draw
            # it (as transformers' own op marks a Linear4bit).
            module._is_hf_initialized = True
            if missing_keys is not None:
                missing_keys.discard(name)
            if value.device.type == "cpu":
                del value
                _release_freed_memory()
        return out


@register_quantizer(QUANT_METHOD)
class MoEBnb4BitQuantizer(Bnb4BitHfQuantizer):
    """transformers' bitsandbytes 4-bit quantizer, plus the fused expert tensors, minus the routers."""

    expert_names: frozenset[str] = frozenset()

    def _process_model_before_weight_loading(self, model, device_map, **kwargs):
        self.expert_names = frozenset(name for name, _, _ in expert_tensors(model))
        super()._process_model_before_weight_loading(model, device_map, **kwargs)

    def get_modules_to_not_convert(self, model, *args, **kwargs):
        return [*super().get_modules_to_not_convert(model, *args, **kwargs), *router_modules(model)]

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if param_name in self.expert_names:
            return True
        return super().param_needs_quantization(model, param_name, **kwargs)

    def get_quantize_ops(self):
        return _QuantizeOnLoad(self)

    def is_serializable(self):
        # The experts' packed form has no deserialiser in transformers: save adapters, reload the base.
        return False


# ---------------------------------------------------------------------------------------------
# Bytes: what the frozen base holds, measured on a loaded model or predicted on `meta`


def four_bit_bytes(numel: int, double_quant: bool, blocksize: int = BLOCKSIZE) -> int:
    """Bytes of one tensor of `numel` weights in bitsandbytes 4-bit: the packed data (two weights a byte),
    the 16-entry code table, and per block of `blocksize` weights a float32 scale, or with double
    quantisation an 8-bit scale plus float32 second-level scales, their 256-entry code table and an offset."""
    blocks = -(-numel // blocksize)
    packed, code = -(-numel // 2), 16 * 4
    if not double_quant:
        return packed + code + 4 * blocks
    return packed + code + blocks + 4 * -(-blocks // _NESTED_BLOCKSIZE) + 256 * 4 + 4


def quant_states(model: nn.Module) -> Iterator[tuple[torch.Tensor, object]]:
    """(stored tensor, its bitsandbytes QuantState) of every 4-bit tensor of `model`: the Linear4bit weights
    (Params4bit carry their state) and the experts' parametrization originals (the parametrization does)."""
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if getattr(p, "quant_state", None) is not None:
                yield p, p.quant_state
        for chain in (getattr(module, "parametrizations", None) or {}).values():
            state = next((getattr(q, "quant_state", None) for q in chain if hasattr(q, "quant_state")), None)
            if state is not None:
                yield chain.original, state


def quant_state_bytes(state) -> int:
    """Bytes of a QuantState's tensors: the scales, the code table, and with double quantisation the offset
    and the second-level scales and code table."""
    tensors = [state.absmax, state.code, getattr(state, "offset", None)]
    if getattr(state, "nested", False):
        tensors += [state.state2.absmax, state.state2.code]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def weight_bytes(model: nn.Module, frozen_only: bool = False) -> int:
    """The bytes the model's parameters and buffers hold as loaded, 4-bit ones with their scales
    (bitsandbytes keeps those in the quantisation state, not in the module's parameters). `frozen_only`:
    leave out parameters that train (an attached adapter's), so the frozen base is what is counted."""
    total, seen = 0, set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if (tensor.data_ptr() in seen and tensor.device.type != "meta") or (
            frozen_only and tensor.requires_grad
        ):
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total + sum(quant_state_bytes(state) for _, state in quant_states(model))


def predicted_weight_bytes(meta_model: nn.Module, config: BitsAndBytesConfig | None) -> int:
    """`weight_bytes` of the model once loaded under `config` (None: as it is), computed on a `meta` model:
    the quantizer decides on the meta model which tensors it would quantise, as it does while loading."""
    if config is None:
        return sum(t.numel() * t.element_size() for t in [*meta_model.parameters(), *meta_model.buffers()])
    quantizer = MoEBnb4BitQuantizer(config)
    quantizer._process_model_before_weight_loading(meta_model, device_map=None)
    total = 0
    for name, tensor in [*meta_model.named_parameters(), *meta_model.named_buffers()]:
        if quantizer.param_needs_quantization(meta_model, name):
            total += four_bit_bytes(tensor.numel(), config.bnb_4bit_use_double_quant)
        else:
            total += tensor.numel() * tensor.element_size()
    return total
