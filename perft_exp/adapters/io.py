"""Adapter directories: PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), read and checked.

PERFT adapters and the LoRA baselines are saved by PEFT's `save_pretrained` (PERFT's config carries the knobs
and the base model's facts: perft_exp/adapters/tuner.py), so a run's `adapter/` loads with
`PeftModel.from_pretrained`, `AutoPeftModelForCausalLM`, transformers' `load_adapter`, lm-eval's `peft=`, and
`load_adapter` here alike. Files are written to a temporary directory and moved in,
so a reader never sees half an adapter.

Adapters written by perft-exp before it used PEFT's format (`format_version` 1: keys
`model.layers.{i}.mlp.perft.experts.A`, the knobs under `perft`) still load: `load_adapter` converts them on
the fly, and `python scripts/convert_adapter.py OLD_DIR NEW_DIR` rewrites one in PEFT's format.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from torch import nn

from perft_exp.adapters.baselines import lora_config
from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.peft_compat import quiet_peft
from perft_exp.adapters.tuner import (
    WEIGHTS_NAME,
    AdapterError,
    PerftPeftConfig,
    PerftType,
    base_signature,
    check_adapter_files,
    read_config_json,
)
from perft_exp.models.arch import get_architecture
from perft_exp.run_dir import ADAPTER_CONFIG_NAME

CONFIG_NAME = ADAPTER_CONFIG_NAME  # named by run_dir.py, which reads it without torch
OLD_FORMAT_VERSION = 1
__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterError",
    "base_signature",
    "check_compatible",
    "convert_old_adapter",
    "load_adapter",
    "load_weights",
    "read_adapter_config",
    "save_adapter",
]


def _base_config(model: nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, base_model: str) -> Path:
    """Save the PEFT model's active adapter with PEFT's `save_pretrained`; `base_model` (a hub id or a path
    that loads) becomes its `base_model_name_or_path`, which AutoPeftModelForCausalLM loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = base_model
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out))
    try:
        # save_embedding_layers=False: PEFT's "auto" would look the base model up on
        # the hub to compare vocab sizes.
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_old_format(meta: dict) -> bool:
    return "format_version" in meta and "peft_type" not in meta


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    """What perft-exp checks of an adapter, in either format: `peft_type`, `variant` and `perft` (the knobs;
    None for a LoRA baseline in PEFT's format), `base_model`, `base_signature` (None for a LoRA baseline),
    `old_format`."""
    path = Path(adapter_dir) / CONFIG_NAME
    meta = read_config_json(path)
    if _is_old_format(meta):
        for key in ("variant", "perft", "base_signature"):
            if key not in meta:
                raise AdapterError(f"adapter config {path} lacks the key {key!r}")
        return {
            **meta,
            "peft_type": "PERFT" if PerftConfig.from_dict(meta["perft"]).is_perft else "LORA",
            "old_format": True,
        }
    if "peft_type" not in meta:
        raise AdapterError(f"adapter config {path} has no peft_type: not a PEFT adapter")
    knob_names = {f for f in PerftConfig.__dataclass_fields__}
    perft = (
        {k: v for k, v in meta.items() if k in knob_names} if meta["peft_type"] == PerftType.PERFT else None
    )
    return {
        "peft_type": meta["peft_type"],
        "variant": perft["variant"] if perft else None,
        "perft": perft,
        "base_model": meta.get("base_model_name_or_path"),
        "base_signature": meta.get("base_signature"),
        "old_format": False,
    }


def check_compatible(
    meta: dict, model_config, cfg: PerftConfig | None = None, where: str = "", base_model: str | None = None
) -> None:
    """Raise AdapterError naming the first mismatch between an adapter (read_adapter_config) and a base model
    or the run's PerftConfig. `model_config` None skips the architecture check (before the model is loaded);
    `base_model` compares the base model's hub id / path as recorded at save time."""
    if base_model is not None and meta.get("base_model") not in (None, base_model):
        raise AdapterError(
            f"adapter {where} was trained on base model {meta['base_model']!r}, not {base_model!r}"
        )
    if model_config is not None and meta.get("base_signature"):
        sig = base_signature(model_config)
        for key, saved in meta["base_signature"].items():
            if sig.get(key) != saved:
                raise AdapterError(
                    f"adapter {where} was trained on base model {meta.get('base_model')!r} "
                    f"with {key}={saved}, but this model has {key}={sig.get(key)}"
                )
    if cfg is None:
        return
    if (meta["peft_type"] == PerftType.PERFT) != cfg.is_perft:
        raise AdapterError(
            f"adapter {where} is a {meta['peft_type']} adapter, but the run asks for {cfg.variant!r}"
        )
    if meta.get("perft") is None:
        return
    saved = PerftConfig.from_dict(meta["perft"])
    for key in ("variant", "num_experts", "top_k", "bottleneck", "form"):
        if key in saved.spec.from_model:  # the base model's (E): its signature is checked above
            continue
        if getattr(saved, key) != getattr(cfg, key):
            raise AdapterError(
                f"adapter {where} is perft.{key}={getattr(saved, key)!r}, "
                f"but the run asks for {getattr(cfg, key)!r}"
            )


def convert_old_adapter(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite an adapter saved by perft-exp's own format (format_version 1) in PEFT's format."""
    src, dst = Path(src), Path(dst)
    meta = read_adapter_config(src)
    if not meta["old_format"]:
        raise AdapterError(f"{src} is already in PEFT's format")
    cfg = PerftConfig.from_dict(meta["perft"])
    try:
        state = load_file(str(src / WEIGHTS_NAME))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise AdapterError(f"adapter weights {src / WEIGHTS_NAME} are truncated or corrupted: {e}") from e
    if cfg.is_perft:
        peft_config = PerftPeftConfig.from_knobs(cfg, base_signature=meta["base_signature"])
        # model.layers.0.mlp.perft.experts.A ->
        # base_model.model.model.layers.0.mlp.perft.perft_layer.experts.A
        state = {
            "base_model.model." + k.replace(".perft.", ".perft.perft_layer.", 1): v for k, v in state.items()
        }
    else:
        peft_config = lora_config(cfg, get_architecture(meta["base_signature"]["model_type"]))
        state = {k.replace(".default.", ".", 1): v for k, v in state.items()}
    peft_config.base_model_name_or_path = meta.get("base_model")
    dst.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(dst / WEIGHTS_NAME), metadata={"format": "pt"}
    )
    peft_config.save_pretrained(str(dst))
    return dst


def load_adapter(
    model: nn.Module, adapter_dir: str | os.PathLike, cfg: PerftConfig | None = None
) -> nn.Module:
    """A freshly loaded base `model` with the adapter in `adapter_dir` (either format) as a PeftModel, checked
    against the model (and `cfg`, the run's knobs, when given) before anything is attached."""
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_config(adapter_dir)
    check_compatible(meta, model.config, cfg, where=str(adapter_dir))
    if meta["old_format"]:
        with tempfile.TemporaryDirectory() as tmp:
            return load_adapter(model, convert_old_adapter(adapter_dir, tmp), cfg)
    check_adapter_files(adapter_dir)
    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    config = peft_model.peft_config["default"]
    peft_model.perft_config = config.knobs() if isinstance(config, PerftPeftConfig) else cfg
    return peft_model


def load_weights(model: nn.Module, adapter_dir: str | os.PathLike, adapter_name: str = "default") -> None:
    """Load a saved adapter's tensors into a PEFT model that already carries the same adapter (resuming a
    checkpoint, the best checkpoint at the end): every tensor present, nothing else."""
    if read_adapter_config(adapter_dir)["old_format"]:  # a checkpoint of a run begun before PEFT's format
        with tempfile.TemporaryDirectory() as tmp:
            return load_weights(model, convert_old_adapter(adapter_dir, tmp), adapter_name)
    weights = Path(adapter_dir) / WEIGHTS_NAME
    check_adapter_files(adapter_dir)
    state = load_peft_weights(str(adapter_dir), device="cpu")
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k or k.endswith(f".{adapter_name}")]
    if missing or result.unexpected_keys:
        raise AdapterError(
            f"{weights} does not hold this run's adapter tensors: missing {missing[:2]}, "
            f"unexpected {list(result.unexpected_keys)[:2]}"
        )
