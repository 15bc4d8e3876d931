"""Tiny OLMoE / Mixtral models, pre-trained on the synthetic world, for CPU runs and tests.

A tiny model is built from the Hugging Face config classes, given a byte-level BPE tokenizer
trained offline on the synthetic text, briefly pre-trained (full parameters, plain causal LM) on
`perft_exp.data.synthetic.pretraining_corpus()` so that its frozen weights know the world's
facts, and saved with `save_pretrained`: it then loads through the same
`AutoModelForCausalLM.from_pretrained(path)` / `AutoTokenizer.from_pretrained(path)` path as a
hub checkpoint.

Usage:
    from perft_exp.models.tiny import ensure_tiny_model
    path = ensure_tiny_model("tiny_olmoe")   # the shipped build (tiny/shipped/); other specs: built once
                                             # (about 4.5 min on 2 cores), cached after

    python -m perft_exp.models.tiny tiny_olmoe [--cache-root DIR]   # build (or find) and print the path
    python -m perft_exp.models.tiny tiny_olmoe --report   # ... and what it knows of the held-out facts

One job per module:
    perft_exp/models/tiny_spec.py   the specs and their build key (torch-free: the run directory keys on it)
    cache.py      the shipped build of the demo's model, the cache: its root, a model's directory
                  `<name>-<build key>`, find or build on a miss (torch-free until it builds)
    shipped/      tiny_olmoe's build, committed: every machine starts from the same weights
    build.py      tokenizer, model config, pre-training, the saved model and its build record
    probes.py     what a model knows of the synthetic world's facts (recorded by a build, reported by the CLI)
    __main__.py   the command line above

Importing this package imports no torch: it exposes the cache's entry point only.
"""

from perft_exp.models.tiny.cache import ensure_tiny_model

__all__ = ["ensure_tiny_model"]
