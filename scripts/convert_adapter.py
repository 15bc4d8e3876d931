"""Rewrite an adapter saved by perft-exp before it used PEFT's format (format_version 1) in PEFT's format.

    python scripts/convert_adapter.py outputs/runs/<task>/<model>/<run>/adapter outputs/converted/<run>

The new directory loads with `PeftModel.from_pretrained` (after `import perft_exp`), AutoPeftModelForCausalLM,
transformers' `load_adapter` and lm-eval's `peft=`. perft-exp's own tools (scripts/evaluate.py,
analyze_routing.py, perft_exp.adapters.io.load_adapter) read the old layout directly;
this is for everything else.
"""

from __future__ import annotations

import sys

from perft_exp.optional_imports import hide_unused

# Files only: nothing is quantised or sharded, so bitsandbytes and DeepSpeed stay unimported (and quiet).
hide_unused()
from perft_exp.adapters.io import convert_old_adapter  # noqa: E402
from perft_exp.cli import one_line  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: scripts/convert_adapter.py OLD_ADAPTER_DIR NEW_ADAPTER_DIR")
    try:
        out = convert_old_adapter(sys.argv[1], sys.argv[2])
    except Exception as e:  # noqa: BLE001 - a CLI: one line, non-zero exit
        sys.exit(f"error: {one_line(e)}")
    print(f"wrote {out} in PEFT's format")


if __name__ == "__main__":
    main()
