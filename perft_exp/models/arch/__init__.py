"""Per-architecture facts: where a model keeps its MoE blocks, routers and experts.

Most families need no code here: `architecture_for(model)` examines a model whose type has no entry once
(perft_exp/models/arch/detect.py) and finds its MoE blocks, their router and experts, and the config keys
holding the expert count and top-k. A family file (`register(MoEArchitecture(...))`, one small file each)
holds only what detection cannot know: the authors' adapter aux coefficient, a router-output converter,
nested config keys, the gate/up layout of the expert tensor.

    python -m perft_exp.models.arch      # the support table of every MoE family transformers ships
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from perft_exp.models.arch.facts import (
    GATE_UP_LAYOUTS,
    MoEArchitecture,
    NotApplicable,
    Routing,
    UnsupportedModel,
)

__all__ = [
    "GATE_UP_LAYOUTS",
    "MoEArchitecture",
    "NotApplicable",
    "Routing",
    "UnsupportedModel",
    "architecture_for",
    "find_moe_blocks",
    "get_architecture",
    "register",
    "supported_architectures",
]

_REGISTRY: dict[str, MoEArchitecture] = {}
_DETECTED: dict[str, MoEArchitecture] = {}


def register(arch: MoEArchitecture) -> MoEArchitecture:
    """Add a family's facts to the registry (its family file calls it); returns them."""
    _REGISTRY[arch.model_type] = arch
    return arch


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("detect", "facts", "support", "__main__"):
            importlib.import_module(f"{__name__}.{info.name}")


def architecture_for(model: nn.Module) -> MoEArchitecture:
    """The facts for this model: its family file, else what detection finds in it (examined once per type)."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    if not _REGISTRY:
        _load_all()
    if config.model_type in _REGISTRY:
        return _REGISTRY[config.model_type]
    if config.model_type not in _DETECTED:
        from perft_exp.models.arch.detect import detect

        _DETECTED[config.model_type] = detect(model)
    return _DETECTED[config.model_type]


def get_architecture(model_type: str) -> MoEArchitecture:
    """The facts for `model_type`: its family file, else detection on a `meta` model of its default config.

    A clear one-line error when transformers has no such type or detection finds no MoE block in it."""
    if not _REGISTRY:
        _load_all()
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    if model_type not in _DETECTED:
        from perft_exp.models.arch.detect import detect_type

        _DETECTED[model_type] = detect_type(model_type)
    return _DETECTED[model_type]


def supported_architectures() -> list[str]:
    """The families with a file (detected families are found on use)."""
    if not _REGISTRY:
        _load_all()
    return sorted(_REGISTRY)


def find_moe_blocks(model: nn.Module, arch: MoEArchitecture) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every sparse MoE block, in layer order."""
    return [(name, m) for name, m in model.named_modules() if arch.is_block(m)]
