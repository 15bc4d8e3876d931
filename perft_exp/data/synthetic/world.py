"""The synthetic world: objects and people with attributes, and which facts are held out for testing.

Every object has a colour, a material, a room it is kept in, a use, a weight and a size; every
person has a hobby and a pet. Each relation has few values, always listed in the order of
VALUES: a multiple-choice question offers a relation's values in that fixed order, so its answer
label follows from the fact alone. (Matching an option to a recalled value in context would need an
induction-style circuit that a model this small does not form in minutes of CPU pre-training;
docs/miniature.md has the measurement.)

For each relation half of the subjects are *held out*: test questions ask only about those
facts, fine-tuning records and the pre-training corpus's questions only about the others. The
world is fixed by WORLD_SEED (not by a suite's seed), so a suite with any seed asks about the
facts the cached tiny model was pre-trained on.

    from perft_exp.data.synthetic.world import build_world
    world = build_world()
    world.value("material", "glim"), world.subjects("material", "test")
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

WORLD_SEED = 2411

# Pronounceable made-up names: no prior meaning, a few BPE tokens each.
# fmt: off
OBJECTS = (
    "glim", "tark", "vosh", "plen", "drub", "fesk", "brom", "quil", "snod", "yarp", "lunt", "merk",
    "dask", "zorp", "kelm", "frip", "bant", "cloy", "dweb", "gorn", "hask", "jilt", "krom", "lesp",
    "mulf", "nerb", "pilk", "rusk", "skiv", "tolp", "wurm", "zeb", "blip", "crag", "dolm", "flon",
    "grip", "hult", "jorb", "kift", "lorm", "morv", "nusk", "prell", "quop", "relk", "stib", "vant",
    "bosk", "clem", "drav", "fump", "gesh", "hoff", "jask", "kolt", "marf", "nox", "pruv", "smeb",
    "trock", "vell", "wisp", "yomp",
)
PEOPLE = (
    "tom", "ann", "bob", "eve", "sam", "kim", "max", "zoe", "ben", "ida", "joe", "liz",
    "ned", "ola", "pat", "ray", "sue", "ted", "uma", "vic", "wes", "amy", "dan", "fay",
    "gus", "hal", "ivy", "jan", "kay", "lou", "mo", "nia",
)
# fmt: on
# Each relation's values in their fixed order (the order of a question's options).
VALUES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "yellow"),
    "material": ("wood", "stone", "glass", "metal"),
    "room": ("kitchen", "garden", "attic", "cellar", "barn"),
    "use": ("cut bread", "dig holes", "sweep floors", "carry water"),
    "weight": ("heavy", "light"),
    "size": ("big", "small"),
    "hobby": ("sing", "swim", "paint"),
    "pet": ("cat", "dog", "bird"),
}
OBJECT_RELATIONS = ("color", "material", "room", "use", "weight", "size")
PERSON_RELATIONS = ("hobby", "pet")
RELATIONS = OBJECT_RELATIONS + PERSON_RELATIONS
# How a relation's values are named in questions ("which material ...").
NOUNS = {
    "color": "color",
    "material": "material",
    "room": "room",
    "use": "job",
    "weight": "weight",
    "size": "size",
    "hobby": "pastime",
    "pet": "animal",
}


@dataclass(frozen=True)
class World:
    """Entities, their attributes, and the (relation, subject) facts reserved for test questions."""

    attrs: dict[str, dict[str, str]]  # subject -> relation -> value
    held_out: frozenset[tuple[str, str]]

    def value(self, relation: str, subject: str) -> str:
        """`subject`'s value of `relation`."""
        return self.attrs[subject][relation]

    def subjects(self, relation: str, split: str | None = None) -> list[str]:
        """Subjects of `relation`, all or only those whose fact belongs to `split` ("train" | "test")."""
        everyone = list(OBJECTS if relation in OBJECT_RELATIONS else PEOPLE)
        if split is None:
            return everyone
        assert split in ("train", "test"), split
        return [s for s in everyone if ((relation, s) in self.held_out) == (split == "test")]

    def facts(self, split: str | None = None) -> list[tuple[str, str, str]]:
        """(relation, subject, value) triples, all or one split's."""
        return [(r, s, self.attrs[s][r]) for r in RELATIONS for s in self.subjects(r, split)]


@cache
def build_world(seed: int = WORLD_SEED) -> World:
    """The fixed world. Values are dealt evenly and held out evenly: within each relation, every
    value names subjects on both sides of the split, so a test question's answer is never a value
    that only held-out subjects have (and no answer can be guessed from value frequencies)."""
    rng = random.Random(seed)
    attrs: dict[str, dict[str, str]] = {s: {} for s in OBJECTS + PEOPLE}
    held_out: set[tuple[str, str]] = set()
    for relation in RELATIONS:
        subjects = list(OBJECTS if relation in OBJECT_RELATIONS else PEOPLE)
        rng.shuffle(subjects)
        values = VALUES[relation]
        # Deal the values round-robin: each value gets len(subjects) / len(values) subjects (+-1) ...
        by_value: dict[str, list[str]] = {v: [] for v in values}
        for i, subject in enumerate(subjects):
            by_value[values[i % len(values)]].append(subject)
        # ... and alternate the split within each value, starting on alternating sides.
        for j, (value, owners) in enumerate(by_value.items()):
            for k, subject in enumerate(owners):
                attrs[subject][relation] = value
                if (k + j) % 2 == 0:
                    held_out.add((relation, subject))
    return World(attrs, frozenset(held_out))
