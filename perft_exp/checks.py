"""Value checks shared by the typed config (perft_exp/config.py) and PerftConfig: one wording for every key.

Each raises ValueError naming the full key and what is allowed (`model.dtype='fp8' is not allowed; choose one
of auto, float32, bfloat16, float16`); perft_exp/config.py's `validate` reports them as ConfigError, the error
of a bad composed config (here, so the modules that validate a config group, e.g. perft_exp/training/batch.py,
raise it without importing the config module that calls them).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad value in the composed config; the message names the key."""


def one_of(key: str, value: T, allowed: Iterable) -> T:
    """`value` if it is one of `allowed` (for an Enum class: its member of that value), else ValueError."""
    choices = list(allowed)
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
    return allowed(value) if isinstance(allowed, type) and issubclass(allowed, Enum) else value


def at_least(key: str, value, bound: float = 0, strict: bool = True) -> None:
    """`value > bound` (strict) or `value >= bound`, else ValueError."""
    if value is None or (value <= bound if strict else value < bound):
        raise ValueError(f"{key}={value!r} must be {'>' if strict else '>='} {bound}")


# Why 8-bit is refused (model.quantization=8bit, MoEBitsAndBytesConfig(load_in_8bit=True)).
EIGHT_BIT_REFUSAL = (
    "bitsandbytes' 8-bit path covers nn.Linear layers only, so the fused MoE experts (over 90 % of the "
    "weights) would stay in 16 bits; use 4bit, which quantises the experts too"
)
# Why LoRA on the fused experts is refused over a 4-bit base (config validation and apply_lora_baseline).
EXPERT_LORA_4BIT = (
    "LoRA on the fused experts needs them as plain tensors, and 4-bit experts are packed behind a "
    "dequantising parametrization that HF PEFT's target_parameters cannot wrap; use quantization=none, or a "
    "PERFT variant (R, E, D, S), which leaves the experts untouched"
)
