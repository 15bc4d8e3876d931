"""Loading a base model: hub id or local directory through `from_pretrained`, or offline on `meta`.

One code path serves a 7B hub checkpoint and the tiny local model: `tiny:<name>` resolves to a
directory built (once, then cached) by perft_exp.models.tiny, and is then loaded like any other.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from perft_exp.config import ModelConfig

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype of `model.dtype`; auto: bf16 on a GPU that has it, else float32."""
    if name != "auto":
        return _DTYPES[name]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPU: bf16 matmuls are slower than fp32 here, and fp32 keeps resume bit-exact


def resolve_pretrained(cfg: ModelConfig) -> str:
    """A hub id or local path for from_pretrained; builds `tiny:<name>` models on first use."""
    if cfg.pretrained.startswith("tiny:"):
        from perft_exp.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model(cfg.pretrained.split(":", 1)[1]))
    return cfg.pretrained


def checkpoint_config(cfg: ModelConfig) -> PretrainedConfig | None:
    """The config.json of a local checkpoint `model.pretrained` points at (None for hub ids and
    tiny:<name>)."""
    path = Path(cfg.pretrained)
    if cfg.pretrained.startswith("tiny:") or not (path / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if config.model_type != cfg.model_type:
        raise ValueError(
            f"model.model_type={cfg.model_type!r} but {path} holds a {config.model_type!r} model"
        )
    return config


def build_config(cfg: ModelConfig) -> PretrainedConfig:
    """The HF config: a local checkpoint's own config.json, else our YAML's architecture numbers (no hub,
    no files)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = checkpoint_config(cfg)
    if config is not None:
        return config
    if not cfg.architecture:
        raise ValueError(f"model {cfg.name!r} has no `architecture` numbers; cannot build it offline")
    if cfg.model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"model.model_type={cfg.model_type!r}: transformers {transformers.__version__} has no such type"
        )
    return CONFIG_MAPPING[cfg.model_type](**dict(cfg.architecture))


def build_meta_model(cfg: ModelConfig) -> torch.nn.Module:
    """The full-size model on the meta device: shapes and parameter counts, no memory, no download."""
    config = build_config(cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(cfg.dtype))


def quantization_config(cfg: ModelConfig):
    """The `quantization_config` for from_pretrained: None, or 4-bit for the Linear layers and the fused
    experts (perft_exp/models/quantization.py). 8-bit was refused when the config was validated."""
    if cfg.quantization == "none":
        return None
    assert cfg.quantization == "4bit", cfg.quantization
    from perft_exp.models.quantization import MoEBitsAndBytesConfig

    compute = resolve_dtype(cfg.dtype if cfg.compute_dtype == "auto" else cfg.compute_dtype)
    return MoEBitsAndBytesConfig(
        bnb_4bit_quant_type=str(cfg.quant_type),
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face endpoint answers at all (seconds, instead of a minute of download retries)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout
        ).close()
        return True
    except OSError:
        return False


def _go_offline_without_hub(path: str) -> bool:
    """A hub id and no network: switch this process to Hugging Face offline mode (the local cache only), so
    loading fails at once instead of after a minute of retries. True when offline."""
    if is_local(path):
        return False
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and not _hub_reachable():
        log.warning(
            "%s is unreachable: loading %s from the local Hugging Face cache only", constants.ENDPOINT, path
        )
        constants.HF_HUB_OFFLINE = True
    return constants.HF_HUB_OFFLINE


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    """The model's tokenizer (pad token = EOS where it has none)."""
    path = path or resolve_pretrained(cfg)
    tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, device: str | torch.device | None = None):
    """(model, tokenizer) from the hub id / local path / tiny model named by `cfg`."""
    path = resolve_pretrained(cfg)
    kwargs = {
        "dtype": resolve_dtype(cfg.dtype),
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.experts_implementation:
        kwargs["experts_implementation"] = cfg.experts_implementation
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quant = quantization_config(cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if device is not None:  # quantised while loading, on the device it will train on
            kwargs["device_map"] = {"": device}
    offline = _go_offline_without_hub(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        if not offline:
            raise
        raise OSError(
            f"model.pretrained={path!r} is not in the local Hugging Face cache and the hub is unreachable; "
            "download it where there is a network, or point model.pretrained at a local copy"
        ) from e
    if model.config.model_type != cfg.model_type:
        raise ValueError(
            f"model.model_type={cfg.model_type!r} but {path} holds a {model.config.model_type!r} model"
        )
    if device is not None and quant is None:
        model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, load_tokenizer(cfg, path)


def is_local(path: str) -> bool:
    """Whether `path` exists on this machine (a local checkpoint, not a hub id)."""
    return Path(path).exists()
