"""Optional heavy dependencies: a run imports bitsandbytes and DeepSpeed only when its config uses them.

transformers' Trainer imports PEFT, and PEFT imports bitsandbytes whenever it is installed; bitsandbytes
looks for hub kernels at import and warns, on every start, that the `kernels` package is missing. accelerate
imports DeepSpeed whenever it is installed, which warns about the accelerator it picks. Neither warning is
something a user of an unquantised, DeepSpeed-free run can act on. `hide_unused` marks the packages a
command's jobs do not use as absent from this process: `sys.modules[name] = None` makes `import name` raise
ImportError and `importlib.util.find_spec(name)` return None, which is how transformers, accelerate and PEFT
test for them, so they take their paths without it. It must run before transformers is imported.

W&B needs nothing here: perft_exp/training/tracking.py imports wandb inside the functions that log.

    from perft_exp.optional_imports import hide_unused
    hide_unused(cfgs)   # the composed configs of every job the command runs
    hide_unused()       # a command that never quantises nor runs DeepSpeed (scripts/bench.py)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def unused(cfgs: Iterable[Any] = ()) -> list[str]:
    """The optional packages that none of the configs `cfgs` (model.quantization, deepspeed.stage) use.

    Each config needs `model.quantization` and `deepspeed.stage` (a composed DictConfig or the typed spec);
    `deepspeed` may be absent (a run's saved spec without DeepSpeed). No configs: nothing is used."""
    cfgs = list(cfgs)
    out = []
    if all(str(cfg.model.quantization) == "none" for cfg in cfgs):
        out.append("bitsandbytes")
    if all(int(_stage(cfg)) == 0 for cfg in cfgs):
        out.append("deepspeed")
    return out


def _stage(cfg: Any) -> int:
    deepspeed = getattr(cfg, "deepspeed", None)
    return 0 if deepspeed is None else deepspeed.stage


def hide_unused(cfgs: Iterable[Any] = ()) -> list[str]:
    """Hide from this process the optional packages the jobs do not use
    (those not imported yet); returns them."""
    hidden = [name for name in unused(cfgs) if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    return hidden
