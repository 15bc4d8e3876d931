"""A synthetic world and LLM-Adapters-style suites for the CPU default run.

The tiny models (`perft_exp.models.tiny`) are pre-trained on `pretraining_corpus()`: every fact of
a fixed world (objects' colour, material, room and use; people's hobby and pet) stated in many
forms, questions and answers about half of the facts, and small-number arithmetic. The suites
ask, in the real LLM-Adapters formats, only about the *other* half (the held-out facts), so a
fine-tuned model scores above the best constant answer only by reading out what the frozen
model stored in pre-training.

    world.py        the entities, their attributes, the held-out split
    templates.py    surface forms: statements, questions, yes/no checks
    corpus.py       the pre-training corpus and the knowledge probes
    arithmetic.py   the arithmetic table and number words
    commonsense.py  one generator per commonsense test set
    math.py         one generator per math test set (word problems whose unknown is a stored fact)
    arithmetic_problems.py  the arithmetic word problems math asked before; the corpus draws words from them
    suite.py        assembly (balanced labels), writing and caching in the LLM-Adapters layout
"""

from perft_exp.data.synthetic.corpus import (
    arithmetic_probes,
    exam_probes,
    fact_probes,
    pretraining_corpus,
    question_probes,
)
from perft_exp.data.synthetic.suite import (
    CORPUS_SUITES,
    CORPUS_VERSION,
    DEFAULT_SIZES,
    GENERATORS,
    SUITE_VERSION,
    TEST_SETS,
    TRAIN_FILES,
    ensure_suite,
    make_suite,
    write_suite,
)
from perft_exp.data.synthetic.world import build_world

__all__ = [
    "arithmetic_probes",
    "CORPUS_SUITES",
    "CORPUS_VERSION",
    "DEFAULT_SIZES",
    "GENERATORS",
    "SUITE_VERSION",
    "TEST_SETS",
    "TRAIN_FILES",
    "build_world",
    "ensure_suite",
    "exam_probes",
    "fact_probes",
    "make_suite",
    "pretraining_corpus",
    "question_probes",
    "write_suite",
]
