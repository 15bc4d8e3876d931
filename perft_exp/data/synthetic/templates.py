"""Surface forms of the world's facts: statements (several per relation), open questions, yes/no checks.

Pre-training states every fact in many forms (Allen-Zhu & Li, "Physics of Language Models 3.1",
arXiv 2309.14316): a fact seen in one sentence shape is stored tied to that shape and cannot be
read out by a question; seen in many shapes, in many orders, it is stored with its subject's name,
where later fine-tuning can reach it.
"""

from __future__ import annotations

import random

# relation -> templates with {s} (subject) and {v} (value). The first one is canonical (probes use it).
STATEMENTS: dict[str, tuple[str, ...]] = {
    "color": (
        "the color of the {s} is {v}",
        "the {s} has a {v} color",
        "{v} is the color of the {s}",
        "if you look at the {s}, you see {v}",
        "the {s} is painted {v}",
    ),
    "material": (
        "the {s} is made of {v}",
        "the {s} is built from {v}",
        "the material of the {s} is {v}",
        "{v} is what the {s} is made of",
        "someone made the {s} out of {v}",
    ),
    "room": (
        "the {s} is kept in the {v}",
        "you find the {s} in the {v}",
        "the {s} belongs in the {v}",
        "the place of the {s} is the {v}",
        "in the {v} there is the {s}",
    ),
    "use": (
        "people use the {s} to {v}",
        "the {s} is used to {v}",
        "with the {s} you can {v}",
        "the job of the {s} is to {v}",
        "to {v}, people take the {s}",
    ),
    "weight": (
        "the weight of the {s} is {v}",
        "the {s} feels {v} in the hand",
        "lifting the {s}, you find it {v}",
        "the {s} is a {v} thing",
        "{v} is how the {s} weighs",
    ),
    "size": (
        "the size of the {s} is {v}",
        "the {s} is a {v} thing to see",
        "next to a box, the {s} looks {v}",
        "{v} is the size of the {s}",
        "people call the {s} {v}",
    ),
    "hobby": (
        "{s} loves to {v}",
        "{s} likes to {v} on a free day",
        "the pastime of {s} is to {v}",
        "when {s} has time, {s} goes to {v}",
        "to {v} is what {s} enjoys most",
    ),
    "pet": (
        "{s} has a pet {v}",
        "the pet of {s} is a {v}",
        "{s} keeps a {v} at home",
        "at home {s} feeds a {v}",
        "a {v} lives with {s}",
    ),
}

# relation -> open questions about a subject, and the answer's phrasing ({v}).
QUESTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "color": (("what color is the {s}?", "which color does the {s} have?"), "{v}"),
    "material": (("what is the {s} made of?", "which material is the {s} made of?"), "{v}"),
    "room": (("where is the {s} kept?", "in which room is the {s}?"), "in the {v}"),
    "use": (("what do people use the {s} for?", "what is the {s} used for?"), "to {v}"),
    "weight": (("how heavy is the {s}?", "what is the weight of the {s}?"), "{v}"),
    "size": (("how big is the {s}?", "what is the size of the {s}?"), "{v}"),
    "hobby": (("what does {s} love to do?", "what is the pastime of {s}?"), "to {v}"),
    "pet": (("what pet does {s} have?", "which animal does {s} keep?"), "a {v}"),
}

# relation -> yes/no questions stating a (possibly wrong) value.
CHECKS: dict[str, tuple[str, ...]] = {
    "color": ("is the {s} {v}?", "does the {s} have a {v} color?"),
    "material": ("is the {s} made of {v}?", "is {v} the material of the {s}?"),
    "room": ("is the {s} kept in the {v}?", "do you find the {s} in the {v}?"),
    "use": ("do people use the {s} to {v}?", "is the {s} used to {v}?"),
    "weight": ("is the {s} {v}?", "does the {s} feel {v}?"),
    "size": ("is the {s} {v}?", "does the {s} look {v}?"),
    "hobby": ("does {s} love to {v}?", "is it the pastime of {s} to {v}?"),
    "pet": ("does {s} have a pet {v}?", "is the pet of {s} a {v}?"),
}


def statement(relation: str, subject: str, value: str, rng: random.Random | None = None) -> str:
    """One statement of a fact, canonical without `rng`, a random form with it (no final period)."""
    forms = STATEMENTS[relation]
    template = forms[0] if rng is None else rng.choice(forms)
    return template.format(s=subject, v=value)
