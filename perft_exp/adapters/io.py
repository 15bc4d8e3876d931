"""Adapter files: `adapter_model.safetensors` (trainable tensors only) + `adapter_config.json`.

The JSON names the variant, its PerftConfig and the base model (path/id and the architecture numbers
that decide tensor shapes). Loading onto another base model or variant is refused with the mismatch
named. Files are written to a temporary name and renamed, so a reader never sees half a file; weights
load from safetensors only (no pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.model import apply_adapters, trainable_parameters
from perft_exp.files import atomic_write_json
from perft_exp.run_dir import ADAPTER_CONFIG_NAME

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = ADAPTER_CONFIG_NAME  # named by run_dir.py, which reads it without torch
FORMAT_VERSION = 1
_SIGNATURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
)


class AdapterError(ValueError):
    """An adapter directory that is missing, corrupt, or does not fit the model/variant."""


def base_signature(config) -> dict:
    """The base-model facts an adapter depends on."""
    return {k: getattr(config, k) for k in _SIGNATURE_KEYS if getattr(config, k, None) is not None}


def _base_config(model: nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, base_model: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: PerftConfig = model.perft_config
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in trainable_parameters(model).items()}
    tmp = out / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS_NAME)
    meta = {
        "format_version": FORMAT_VERSION,
        "variant": cfg.variant,
        "perft": cfg.to_dict(),
        "base_model": base_model,
        "base_signature": base_signature(_base_config(model)),
    }
    atomic_write_json(out / CONFIG_NAME, meta)
    return out


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"no adapter config at {path}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(
            f"adapter config {path} is not valid JSON ({e}); the file is truncated or corrupted"
        ) from e
    for key in ("variant", "perft", "base_signature"):
        if key not in meta:
            raise AdapterError(f"adapter config {path} lacks the key {key!r}")
    return meta


def check_compatible(
    meta: dict, model_config, cfg: PerftConfig | None = None, where: str = "", base_model: str | None = None
) -> None:
    """Raise AdapterError naming the first mismatch between an adapter and a base model / variant.

    `model_config` None skips the architecture check (used before the model is loaded); `base_model`
    compares the base model's hub id / path as recorded at save time.
    """
    if base_model is not None and meta.get("base_model") not in (None, base_model):
        raise AdapterError(
            f"adapter {where} was trained on base model {meta['base_model']!r}, not {base_model!r}"
        )
    sig = base_signature(model_config) if model_config is not None else {}
    for key, saved in meta["base_signature"].items() if model_config is not None else ():
        if sig.get(key) != saved:
            raise AdapterError(
                f"adapter {where} was trained on base model {meta.get('base_model')!r} with {key}={saved}, "
                f"but this model has {key}={sig.get(key)}"
            )
    if cfg is not None:
        saved = PerftConfig.from_dict(meta["perft"])
        for key in ("variant", "num_experts", "top_k", "bottleneck", "form"):
            if key in saved.spec.from_model:  # the base model's (E): its signature is checked above
                continue
            if getattr(saved, key) != getattr(cfg, key):
                raise AdapterError(
                    f"adapter {where} is perft.{key}={getattr(saved, key)!r}, but the run asks for {getattr(cfg, key)!r}"
                )


def load_adapter(
    model: nn.Module, adapter_dir: str | os.PathLike, cfg: PerftConfig | None = None
) -> nn.Module:
    """Attach the adapter saved in `adapter_dir` to a freshly loaded base `model` and load its weights."""
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_config(adapter_dir)
    check_compatible(meta, model.config, cfg, where=str(adapter_dir))
    saved_cfg = PerftConfig.from_dict(meta["perft"])
    model = apply_adapters(model, saved_cfg)
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterError(f"no adapter weights at {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"adapter weights {weights} are truncated or corrupted: {e}") from e
    params = trainable_parameters(model)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise AdapterError(
            f"adapter weights {weights} do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != state[name].shape:
                raise AdapterError(
                    f"{weights}: {name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(state[name].to(p.dtype))
    return model
