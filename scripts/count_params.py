r"""Parameter accounting for any model/variant, from the full-size config on the `meta` device.

    python scripts/count_params.py model=olmoe_1b_7b variant=R perft.num_experts=4 perft.top_k=2 \
        perft.bottleneck=16

Prints one JSON object: trainable, activated_trainable, base_total, base_active and their ratios, and
`base_weight_bytes`: the bytes the frozen base's parameters and buffers hold as loaded under
`model.quantization` (4bit: packed weights with their scales; `model.dtype` sets the unquantised ones). Takes
the same `key=value` overrides as train.py; builds nothing in memory and downloads nothing.
`model.pretrained=<dir>` counts that checkpoint's own config.json; tiny:<name> models are loaded for real.
"""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig

from perft_exp.cli import one_line
from perft_exp.config import compose, group_spec, perft_config
from perft_exp.optional_imports import hide_unused


def count(overrides: list[str]) -> dict:
    return count_config(compose(overrides))


def count_config(cfg: DictConfig) -> dict:
    """The parameter counts of the composed config's model with its adapters (built on meta where it can)."""
    from perft_exp.adapters.counting import count_parameters
    from perft_exp.adapters.model import apply_adapters
    from perft_exp.models.loading import build_meta_model, checkpoint_config, load_model, quantization_config
    from perft_exp.models.quantization import predicted_weight_bytes, weight_bytes

    perft, base = perft_config(cfg), group_spec(cfg.model)
    # A local checkpoint (model.pretrained=<dir>) is counted from its own config.json, on meta like the
    # YAML's.
    on_meta = base.architecture or checkpoint_config(base) is not None
    if on_meta:
        model = build_meta_model(base)
        held = predicted_weight_bytes(build_meta_model(base), quantization_config(base))
    else:
        model = load_model(base)[0]
        held = weight_bytes(model)
    model = apply_adapters(model, perft)
    return {
        "model": base.name,
        "config": model.perft_config.run_label(),
        **count_parameters(model).to_dict(),
        "quantization": str(base.quantization),
        "base_weight_bytes": held,
    }


def main() -> None:
    try:
        cfg = compose(sys.argv[1:])
        hide_unused([cfg])  # before transformers loads: no warnings from packages the config does not use
        print(json.dumps(count_config(cfg), indent=2))
    except Exception as e:  # noqa: BLE001 - a CLI: one line, non-zero exit
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
