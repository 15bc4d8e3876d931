"""The pinned PEFT against the pinned transformers: warnings from one about the other,
which no user can act on.

PEFT's `PeftModel.__init__` (0.21) reads `model.is_gradient_checkpointing`, an alias that transformers 5.x
deprecates with a FutureWarning on every read: each `get_peft_model` and `PeftModel.from_pretrained` would
print it. `quiet_peft()` drops exactly that warning around the calls perft-exp makes;
every other warning shows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# The start of transformers' message (a regular expression matched at the message's start).
_GRADIENT_CHECKPOINTING_ALIAS = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Run a PEFT model constructor without transformers' deprecation of the alias PEFT reads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GRADIENT_CHECKPOINTING_ALIAS, category=FutureWarning)
        yield
