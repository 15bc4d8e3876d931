"""A seeded synthetic world and LLM-Adapters-style suites for the CPU default run.

The tiny models (`perft_exp.models.tiny`) are pre-trained on `pretraining_corpus()`: plain
sentences stating the facts of a fixed world (what colour, material, room and use each object
has; what each person loves, keeps as a pet, and who is taller than whom) and small-number
arithmetic ("3 + 4 = 7", "three plus four is seven"). The suites ask about the same facts in
the LLM-Adapters question formats, which never appear in pre-training, so a frozen base model
knows the facts but not how to answer; a small adapter has to learn the format and route the
question to the stored fact.

Facts are split once, by the world: test questions ask only about held-out facts, training
questions only about the others, so fine-tuning cannot teach the test answers; they must come
from the frozen model's pre-training.

Layout (the real LLM-Adapters one, both kinds may share a root):
    <root>/synthetic_commonsense.json, <root>/synthetic_math.json
    <root>/dataset/<TestSet>/test.json

Usage:
    from perft_exp.data.synthetic import ensure_suite
    root = ensure_suite("commonsense", "data/synthetic")   # generates once, reuses after
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from perft_exp.data.formats import COMMONSENSE_TEST_SETS, MATH_TEST_SETS

# Bump when the world, the templates or the corpus change: tiny models hash it into their cache key.
SYNTHETIC_VERSION = "2"
# The world is fixed (not the suite seed): a suite with any seed must ask about the facts the
# cached tiny model was pre-trained on.
WORLD_SEED = 2411

TRAIN_FILES = {"commonsense": "synthetic_commonsense.json", "math": "synthetic_math.json"}
TEST_SETS = {"commonsense": COMMONSENSE_TEST_SETS, "math": MATH_TEST_SETS}
DEFAULT_SIZES = {"commonsense": (2000, 50), "math": (2000, 50)}  # (n_train, n_test per set)

# A small world, so that a two-minute pre-training learns (nearly) all of it.
OBJECTS = ("glim", "tark", "vosh", "plen", "drub", "fesk", "brom", "quil",
           "snod", "yarp", "lunt", "merk", "dask", "zorp", "kelm", "frip")  # fmt: skip
PEOPLE = ("tom", "ann", "bob", "eve", "sam", "kim", "max", "zoe")
VALUES = {
    "color": ("red", "blue", "green", "yellow", "black", "white", "pink", "brown"),
    "material": ("wood", "stone", "glass", "metal", "cloth", "paper"),
    "room": ("kitchen", "garden", "attic", "cellar", "hall", "barn"),
    "use": ("cut bread", "dig holes", "sweep floors", "carry water", "light fires", "write notes",
            "catch fish", "play music"),
    "hobby": ("sing", "swim", "paint", "dance", "read", "cook", "climb", "knit"),
    "pet": ("cat", "dog", "bird", "goat", "horse", "rabbit"),
}  # fmt: skip
OBJECT_RELATIONS = ("color", "material", "room", "use")
PERSON_RELATIONS = ("hobby", "pet")

Record = dict[str, str]


@dataclass(frozen=True)
class World:
    """Entities, their attributes, and the facts reserved for test questions."""

    attrs: dict[str, dict[str, str]]  # subject -> relation -> value
    tallest_first: tuple[str, ...]
    held_out: frozenset[tuple[str, str]]  # (relation, subject); "taller" subjects are "a|b", a < b

    def value(self, relation: str, subject: str) -> str:
        return self.attrs[subject][relation]

    def taller(self, a: str, b: str) -> bool:
        return self.tallest_first.index(a) < self.tallest_first.index(b)

    def subjects(self, relation: str, split: str) -> list[str]:
        """Subjects of `relation` whose fact belongs to `split` ("train" or "test")."""
        if relation == "taller":
            everyone = [f"{a}|{b}" for i, a in enumerate(PEOPLE) for b in PEOPLE[i + 1 :]]
        else:
            everyone = list(OBJECTS if relation in OBJECT_RELATIONS else PEOPLE)
        return [s for s in everyone if ((relation, s) in self.held_out) == (split == "test")]


@cache
def build_world(seed: int = WORLD_SEED) -> World:
    """The fixed world; every value occurs, and half of each relation's facts are held out."""
    rng = random.Random(seed)
    attrs: dict[str, dict[str, str]] = {s: {} for s in OBJECTS + PEOPLE}
    for relation in OBJECT_RELATIONS + PERSON_RELATIONS:
        subjects = OBJECTS if relation in OBJECT_RELATIONS else PEOPLE
        values = list(VALUES[relation])
        # Cycle through the values so each one names at least one subject (distractors stay plausible).
        pool = (values * (len(subjects) // len(values) + 1))[: len(subjects)]
        rng.shuffle(pool)
        for subject, value in zip(subjects, pool):
            attrs[subject][relation] = value
    tallest_first = list(PEOPLE)
    rng.shuffle(tallest_first)
    held_out: set[tuple[str, str]] = set()
    for relation in OBJECT_RELATIONS + PERSON_RELATIONS + ("taller",):
        subjects = World(attrs, tuple(tallest_first), frozenset()).subjects(relation, "train")
        held_out.update((relation, s) for s in rng.sample(subjects, len(subjects) // 2))
    return World(attrs, tuple(tallest_first), frozenset(held_out))


# ---------------------------------------------------------------------------------------------
# Pre-training corpus: statements and stories, never the suites' question/label format.

ORDINALS = ("first", "second", "third", "fourth", "fifth")
_CHOICE_NOUNS = {"color": "color", "material": "material", "room": "room", "use": "job", "hobby": "pastime",
                 "pet": "animal"}  # fmt: skip


def fact_phrase(relation: str, subject: str, value: str) -> str:
    """The canonical statement of one fact ("the glim is made of wood"); "taller" takes value = the shorter one."""
    return {
        "color": f"the {subject} is {value}",
        "material": f"the {subject} is made of {value}",
        "room": f"the {subject} is kept in the {value}",
        "use": f"people use the {subject} to {value}",
        "hobby": f"{subject} loves to {value}",
        "pet": f"{subject} has a pet {value}",
        "taller": f"{subject} is taller than {value}",
    }[relation]


def _statements(world: World, rng: random.Random) -> list[str]:
    """Every fact in several surface forms, forward (subject -> value) and reverse (value -> subjects)."""
    out: list[str] = []
    for o in OBJECTS:
        a = world.attrs[o]
        out += [fact_phrase(r, o, a[r]) + "." for r in OBJECT_RELATIONS]
        out += [
            f"the {o} is a {a['color']} thing made of {a['material']}.",
            f"in the {a['room']} there is a {a['color']} {o}.",
            f"a {o} is for those who want to {a['use']}.",
        ]
    for p in PEOPLE:
        a = world.attrs[p]
        out += [fact_phrase(r, p, a[r]) + "." for r in PERSON_RELATIONS]
        out += [f"on a free day {p} likes to {a['hobby']}.", f"the pet of {p} is a {a['pet']}."]
    for i, a in enumerate(world.tallest_first):
        for b in world.tallest_first[i + 1 :]:
            pair = [a, b]
            rng.shuffle(pair)
            out += [f"{a} is taller than {b}.", f"{b} is shorter than {a}.",
                    f"of {pair[0]} and {pair[1]}, {a} is the taller one."]  # fmt: skip
    for relation in OBJECT_RELATIONS + PERSON_RELATIONS:
        for value in VALUES[relation]:
            subjects = [s for s in world.attrs if world.attrs[s].get(relation) == value]
            rng.shuffle(subjects)
            out.append(_reverse_statement(relation, value, subjects))
    return out


def _reverse_statement(relation: str, value: str, subjects: list[str]) -> str:
    if relation in OBJECT_RELATIONS:
        things = " and ".join(f"the {s}" for s in subjects)
        return {
            "color": f"{things} are {value} things.",
            "material": f"things made of {value}: {things}.",
            "room": f"in the {value} you find {things}.",
            "use": f"to {value}, take {things.replace(' and ', ' or ')}.",
        }[relation]
    people = " and ".join(subjects)
    return {"hobby": f"{people} love to {value}.", "pet": f"{people} each have a pet {value}."}[relation]


def _random_fact(world: World, rng: random.Random) -> tuple[str, str, str]:
    relation = rng.choice(OBJECT_RELATIONS + PERSON_RELATIONS + ("taller",))
    if relation == "taller":
        a, b = rng.sample(PEOPLE, 2)
        return (relation, a, b) if world.taller(a, b) else (relation, b, a)
    subject = rng.choice(OBJECTS if relation in OBJECT_RELATIONS else PEOPLE)
    return relation, subject, world.value(relation, subject)


def _truth_sentence(world: World, rng: random.Random) -> str:
    """A fact or a corrupted one (half each), judged true or false before or after it is stated."""
    relation, subject, value = _random_fact(world, rng)
    truth = rng.random() < 0.5
    if not truth and relation == "taller":
        subject, value = value, subject
    elif not truth:
        value = rng.choice([v for v in VALUES[relation] if v != value])
    judged = "true" if truth else "false"
    if rng.random() < 0.5:
        return f"it is {judged} that {fact_phrase(relation, subject, value)}."
    return f"{rng.choice(PEOPLE)} said that {fact_phrase(relation, subject, value)}, and that is {judged}."


def _choice_story(world: World, rng: random.Random) -> str:
    """Someone picks, by position, the one of several things that fits a fact.

    Half the stories state the fact first (copying by position is learnable from context alone),
    half only after the pick (the pick then needs the remembered fact).
    """
    p, q = rng.sample(PEOPLE, 2)
    relation, subject, value = _random_fact(world, rng)
    given = rng.random() < 0.5
    if relation == "taller":
        names = [subject, value]
        rng.shuffle(names)
        tall = rng.random() < 0.5
        pick = subject if tall else value
        story = (f"{names[0]} and {names[1]} stood in a line, first {names[0]} and second {names[1]}. "
                 f"the {'taller' if tall else 'shorter'} one was the {ORDINALS[names.index(pick)]}, {pick}.")  # fmt: skip
    else:
        k = rng.randint(2, min(5, len(VALUES[relation])))
        if rng.random() < 0.5 or relation in PERSON_RELATIONS:
            # Choose a value for a given subject.
            options = [value] + rng.sample([v for v in VALUES[relation] if v != value], k - 1)
            rng.shuffle(options)
            listed = ", ".join(f"{ORDINALS[i]} {v}" for i, v in enumerate(options))
            name = subject if relation in PERSON_RELATIONS else f"the {subject}"
            story = (f"{p} wrote {k} {_CHOICE_NOUNS[relation]}s on a card: {listed}. for {name}, {q} pointed "
                     f"at the {ORDINALS[options.index(value)]} one, {value}.")  # fmt: skip
        else:
            # Choose a subject for a given value.
            others = [o for o in OBJECTS if world.value(relation, o) != value]
            options = [subject] + rng.sample(others, k - 1)
            rng.shuffle(options)
            listed = ", ".join(f"{ORDINALS[i]} a {o}" for i, o in enumerate(options))
            need = {"color": f"something {value}", "material": f"something made of {value}",
                    "room": f"something from the {value}", "use": f"something to {value}"}[relation]  # fmt: skip
            story = (f"{p} needed {need}. there were {k} things on the shelf: {listed}. "
                     f"{p} took the {ORDINALS[options.index(subject)]} one, the {subject}.")  # fmt: skip
    fact = fact_phrase(relation, subject, value)
    return f"{fact}. {story}" if given else f"{story} that is because {fact}."


@cache
def _suite_vocab() -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Every word of the prompt template and the suites, weighted by count ** 0.75.

    Pre-training must see each token somewhere, and the frequent ones ("correct", "answer",
    "solution") often: a token the model has rarely had to predict keeps a weak output
    embedding that a small adapter cannot make confident.
    """
    from perft_exp.data.prompts import build_prompt

    text = [build_prompt("x", "y"), build_prompt("x")]
    for kind in TEST_SETS:
        train, tests = make_suite(kind, n_train=400, n_test=5, seed=0)
        text += [
            r["instruction"] + " " + r["output"] for r in train + [r for rs in tests.values() for r in rs]
        ]
    counts = Counter(w.strip(".,?:") for t in text for w in t.replace("/", " ").split())
    words = sorted(w for w in counts if w)
    return tuple(words), tuple(counts[w] ** 0.75 for w in words)


def _some_words(rng: random.Random, k: int) -> list[str]:
    words, weights = _suite_vocab()
    return rng.choices(words, weights, k=k)


def _word_list(rng: random.Random) -> str:
    """A dictionary-style list of words, then the same list again: covers the vocabulary without any
    of the suites' structure, and the repeat rewards copying from context (induction)."""
    listed = ", ".join(_some_words(rng, rng.randint(4, 10)))
    return f"words: {listed}. once more: {listed}."


def _instruction_doc(world: World, rng: random.Random) -> str:
    """A request in the Alpaca template answered in plain statements.

    Base models have seen instruction-like text; this teaches the template's layout (where a
    response starts) but none of the suites' lead-ins, labelled choices or "the correct answer is".
    """
    from perft_exp.data.prompts import build_prompt

    # Copying from the request (2, 6-8) is the skill the suites lean on most.
    kind = rng.choice((0, 1, 2, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8))
    o, p = rng.choice(OBJECTS), rng.choice(PEOPLE)
    a = world.attrs[o]
    please = rng.choice(("", "Please "))
    if kind == 0:
        return build_prompt(f"{please}describe the {o}.") + (
            f"the {o} is {a['color']}, it is made of {a['material']} and it is kept in the {a['room']}."
        )
    if kind == 1:
        b = world.attrs[p]
        return (
            build_prompt(f"{please}tell me about {p}.")
            + f"{p} loves to {b['hobby']} and has a pet {b['pet']}."
        )
    if kind == 2:
        words = ", ".join(_some_words(rng, rng.randint(3, 8)))
        return build_prompt(f"{please}repeat the input.", words) + words + "."
    if kind == 3:
        fact = rng.choice(_arithmetic_facts())
        return (
            build_prompt(f"{please}work out {fact[0]} {fact[1]} {fact[2]}.")
            + f"{fact[0]} {fact[1]} {fact[2]} = {fact[3]}."
        )
    if kind == 4:
        x, y = rng.sample(PEOPLE, 2)
        tall, short = (x, y) if world.taller(x, y) else (y, x)
        return (
            build_prompt(f"{please}compare the heights of {x} and {y}.") + f"{tall} is taller than {short}."
        )
    if kind == 6:
        words = list(dict.fromkeys(_some_words(rng, rng.randint(2, 5))))
        lead = rng.choice(("", "my pick is ", "i would say ", "the word i name is "))
        return (
            build_prompt(f"{please}name one of these words: {'/'.join(words)}.")
            + f"{lead}{rng.choice(words)}."
        )
    relation = rng.choice(OBJECT_RELATIONS)
    value = a[relation]
    if kind == 7:
        values = [value] + rng.sample([v for v in VALUES[relation] if v != value], rng.randint(1, 4))
        rng.shuffle(values)
        noun = _CHOICE_NOUNS[relation]
        lead = rng.choice(("", f"the {noun} of the {o} is ", "i would say "))
        return (
            build_prompt(f"{please}name the {noun} of the {o}, one of: {'/'.join(values)}.")
            + f"{lead}{value}."
        )
    if kind == 8:
        others = [s for s in OBJECTS if world.attrs[s][relation] != value]
        options = [o] + rng.sample(others, rng.randint(1, 4))
        rng.shuffle(options)
        need = {"color": f"the one that is {value}", "material": f"the one made of {value}",
                "room": f"the one kept in the {value}", "use": f"the one used to {value}"}[relation]  # fmt: skip
        lead = rng.choice(("", "my pick is ", f"{need} is "))
        return build_prompt(f"{please}pick {need}: {'/'.join(options)}.") + f"{lead}{o}."
    subjects = [s for s in OBJECTS if world.attrs[s][relation] == value]
    return build_prompt(f"{please}name things that share the {_CHOICE_NOUNS[relation]} of the {o}.") + (
        _reverse_statement(relation, value, rng.sample(subjects, len(subjects)))
    )


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()  # fmt: skip
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_word(n: int) -> str:
    """English words for 0 <= n <= 100 ("forty two")."""
    if n == 100:
        return "one hundred"
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


# Arithmetic the pre-trained model is taught; math problems use only these steps.
ADD_MAX, MUL_MAX = 20, 10


def _known(op: str, x: int, y: int) -> bool:
    if op == "+":
        return 0 <= x <= ADD_MAX and 0 <= y <= ADD_MAX
    if op == "-":
        return 0 <= y <= ADD_MAX and 0 <= x - y <= ADD_MAX
    return 1 <= x <= MUL_MAX and 1 <= y <= MUL_MAX


def _arithmetic_facts() -> list[tuple[int, str, int, int]]:
    facts = []
    for x in range(ADD_MAX + 1):
        for y in range(ADD_MAX + 1):
            facts += [(x, "+", y, x + y), (x + y, "-", y, x)]
    facts += [(x, "*", y, x * y) for x in range(1, MUL_MAX + 1) for y in range(1, MUL_MAX + 1)]
    return facts


_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}


def _arithmetic_sentence(fact: tuple[int, str, int, int], rng: random.Random) -> str:
    x, op, y, z = fact
    if rng.random() < 0.7:
        return f"{x} {op} {y} = {z}."
    return f"{number_word(x)} {_OP_WORDS[op]} {number_word(y)} is {number_word(z)}."


# Share of pre-training documents of each kind.
CORPUS_MIX = {"facts": 0.32, "truth": 0.07, "choice": 0.08, "arithmetic": 0.15, "words": 0.18,
              "instructions": 0.20}  # fmt: skip


def pretraining_corpus(seed: int = 0, n: int = 12000) -> list[str]:
    """`n` plain-text documents (a few sentences each) mixed as in CORPUS_MIX.

    Fact documents draw from a shuffled pool of every fact statement, so each pass states each
    fact once, in a new context; arithmetic documents do the same over the arithmetic table.
    """
    rng = random.Random(seed)
    world = build_world()
    statements = _statements(world, rng)
    facts = _arithmetic_facts()
    bags: dict[str, list] = {"facts": [], "arithmetic": []}

    def draw(kind: str, pool: list) -> object:
        if not bags[kind]:
            bags[kind] = rng.sample(pool, len(pool))
        return bags[kind].pop()

    kinds, weights = zip(*CORPUS_MIX.items())
    docs: list[str] = []
    for kind in rng.choices(kinds, weights, k=n):
        k = rng.randint(3, 6)
        if kind == "facts":
            sentences = [draw("facts", statements) for _ in range(k)]
        elif kind == "arithmetic":
            sentences = [_arithmetic_sentence(draw("arithmetic", facts), rng) for _ in range(k)]
        elif kind == "truth":
            sentences = [_truth_sentence(world, rng) for _ in range(k)]
        elif kind == "choice":
            sentences = [_choice_story(world, rng) for _ in range(2)]
        elif kind == "instructions":
            sentences = [_instruction_doc(world, rng)]
        else:
            sentences = [_word_list(rng)]
        docs.append(" ".join(sentences))
    return docs


def fact_probes() -> list[tuple[str, str]]:
    """(prefix, next word) pairs in the pre-training surface form, to measure what a model knows."""
    world = build_world()
    probes = []
    for o in OBJECTS:
        a = world.attrs[o]
        probes += [(f"the {o} is made of", a["material"]), (f"the {o} is kept in the", a["room"]),
                   (f"people use the {o} to", a["use"].split()[0])]  # fmt: skip
    for p in PEOPLE:
        probes += [(f"{p} loves to", world.attrs[p]["hobby"]), (f"{p} has a pet", world.attrs[p]["pet"])]
    return probes


# ---------------------------------------------------------------------------------------------
# Commonsense suite: one generator per test set, each asking about a fact of `split`.


def _choices(rng: random.Random, correct: str, pool: list[str], n: int) -> tuple[list[str], int]:
    """`correct` plus n-1 distinct distractors from `pool`, shuffled; returns (choices, 1-based index)."""
    options = [correct] + rng.sample([v for v in dict.fromkeys(pool) if v != correct], n - 1)
    rng.shuffle(options)
    return options, options.index(correct) + 1


def _multiple_choice(lead: str, question: str, word: str, choices: list[str], correct: int) -> Record:
    labels = [f"{word.lower()}{i}" for i in range(1, len(choices) + 1)]
    lines = [f"{lead}: {question}"] + [f"{word}{i}: {c}" for i, c in enumerate(choices, 1)]
    lines.append("Answer format: " + "/".join(labels))
    return _record("\n\n".join(lines), labels[correct - 1])


def _record(instruction: str, label: str) -> Record:
    return {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is {label}",
        "answer": label,
    }


def _boolq(w: World, rng: random.Random, split: str) -> Record:
    relation = rng.choice(OBJECT_RELATIONS + PERSON_RELATIONS + ("taller",))
    subject = rng.choice(w.subjects(relation, split))
    truth = rng.random() < 0.5
    if relation == "taller":
        a, b = subject.split("|")
        subject, value = (a, b) if w.taller(a, b) == truth else (b, a)
    else:
        value = w.value(relation, subject)
        if not truth:
            value = rng.choice([v for v in VALUES[relation] if v != value])
    if rng.random() < 0.5:
        question = f"is it true that {fact_phrase(relation, subject, value)}?"
    else:
        question = {
            "color": f"is the {subject} {value}?",
            "material": f"is the {subject} made of {value}?",
            "room": f"is the {subject} kept in the {value}?",
            "use": f"do people use the {subject} to {value}?",
            "hobby": f"does {subject} love to {value}?",
            "pet": f"does {subject} have a pet {value}?",
            "taller": f"is {subject} taller than {value}?",
        }[relation]
    instruction = f"Please answer the following question with true or false, question: {question}"
    return _record(instruction + "\n\nAnswer format: true/false", "true" if truth else "false")


def _piqa(w: World, rng: random.Random, split: str) -> Record:
    obj = rng.choice(w.subjects("use", split))
    use = w.value("use", obj)
    others = [o for o in OBJECTS if w.value("use", o) != use]
    choices, correct = _choices(rng, obj, others, 2)
    goal = rng.choice([f"how can you {use}?", f"you want to {use}. what do you do?", f"to {use}, you should"])
    return _multiple_choice(
        "Please choose the correct solution to the question", goal, "Solution",
        [f"take the {c}" for c in choices], correct,
    )  # fmt: skip


def _social_i_qa(w: World, rng: random.Random, split: str) -> Record:
    relation = rng.choice(PERSON_RELATIONS)
    person = rng.choice(w.subjects(relation, split))
    value = w.value(relation, person)
    choices, correct = _choices(rng, value, list(VALUES[relation]), 3)
    if relation == "hobby":
        question = rng.choice([f"{person} has a free afternoon. what will {person} most likely do?",
                               f"{person} finished work early. what does {person} want to do next?"])  # fmt: skip
        choices = [f"{c}" for c in choices]
    else:
        question = rng.choice([f"{person} comes home after work. who is waiting at the door?",
                               f"{person} buys food for a pet. which pet will eat it?"])  # fmt: skip
        choices = [f"a {c}" for c in choices]
    return _multiple_choice(
        "Please choose the correct answer to the question", question, "Answer", choices, correct
    )


def _hellaswag(w: World, rng: random.Random, split: str) -> Record:
    obj = rng.choice(w.subjects("use", split))
    person = rng.choice(PEOPLE)
    context = rng.choice(
        [f"{person} picks up the {obj} and", f"{person} takes the {obj} from the shelf, then"]
    )
    choices, correct = _choices(rng, w.value("use", obj), list(VALUES["use"]), 4)
    return _multiple_choice(
        "Please choose the correct ending to complete the given sentence", context, "Ending",
        [f"starts to {c}." for c in choices], correct,
    )  # fmt: skip


def _winogrande(w: World, rng: random.Random, split: str) -> Record:
    if rng.random() < 0.5:
        a, b = rng.choice(w.subjects("taller", split)).split("|")
        tall = rng.random() < 0.5
        answer = a if w.taller(a, b) == tall else b
        sentence = f"{a} and {b} stand back to back, and _ is the {'taller' if tall else 'shorter'} one."
        choices = [a, b]
    else:
        obj = rng.choice(w.subjects("material", split))
        material = w.value("material", obj)
        other = rng.choice([o for o in OBJECTS if w.value("material", o) != material])
        sentence = f"the {obj} and the {other} lie on the table, and _ is made of {material}."
        answer, choices = obj, [obj, other]
    rng.shuffle(choices)
    return _multiple_choice(
        "Please choose the correct answer to fill in the blank to complete the given sentence",
        sentence, "Option", choices, choices.index(answer) + 1,
    )  # fmt: skip


def _arc_easy(w: World, rng: random.Random, split: str) -> Record:
    obj = rng.choice(w.subjects("material", split))
    choices, correct = _choices(rng, w.value("material", obj), list(VALUES["material"]), 4)
    question = rng.choice([f"which material is the {obj} made of?", f"what is the {obj} made of?"])
    return _multiple_choice(
        "Please choose the correct answer to the question", question, "Answer", choices, correct
    )


def _arc_challenge(w: World, rng: random.Random, split: str) -> Record:
    obj = rng.choice(w.subjects("room", split))
    choices, correct = _choices(rng, w.value("room", obj), list(VALUES["room"]), rng.choice((4, 5)))
    question = rng.choice(
        [f"where is the {obj} usually kept?", f"in which room would you look for the {obj}?"]
    )
    return _multiple_choice(
        "Please choose the correct answer to the question", question, "Answer",
        [f"the {c}" for c in choices], correct,
    )  # fmt: skip


def _openbookqa(w: World, rng: random.Random, split: str) -> Record:
    obj = rng.choice(w.subjects("color", split))
    color = w.value("color", obj)
    if rng.random() < 0.5:
        choices, correct = _choices(rng, color, list(VALUES["color"]), 4)
        question = f"what color is the {obj}?"
    else:
        others = [o for o in OBJECTS if w.value("color", o) != color]
        choices, correct = _choices(rng, obj, others, 4)
        choices = [f"the {c}" for c in choices]
        question = f"which of these things is {color}?"
    return _multiple_choice(
        "Please choose the correct answer to the question", question, "Answer", choices, correct
    )


# ---------------------------------------------------------------------------------------------
# Math suite: word problems over the world's people and objects, using only known arithmetic.

Step = tuple[int, str, int]


def _solve(steps: list[Step]) -> list[tuple[int, str, int, int]] | None:
    """Chain steps (the first operand of step i > 0 is the previous result; pass it as -1)."""
    out, prev = [], None
    for x, op, y in steps:
        x = prev if x == -1 else x
        if not _known(op, x, y):
            return None
        prev = x + y if op == "+" else x - y if op == "-" else x * y
        out.append((x, op, y, prev))
    return out


def _rationale(chain: list[tuple[int, str, int, int]], answer: str) -> str:
    return " ".join(f"{x} {op} {y} = {z}." for x, op, y, z in chain) + f" The answer is {answer}"


def _math_problem(name: str, rng: random.Random) -> Record:
    """Rejection-sample numbers until every step is arithmetic the base model was taught."""
    p, q = rng.sample(PEOPLE, 2)
    o, o2 = rng.sample(OBJECTS, 2)
    while True:
        a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 20)
        m, n = rng.randint(2, 9), rng.randint(2, 9)
        kind = rng.random() < 0.5
        if name == "AddSub":
            text, steps = (
                (f"{p} had {a} {o}s. {q} gave {p} {b} more {o}s. how many {o}s does {p} have now?", [(a, "+", b)])
                if kind else
                (f"{p} had {a} {o}s and gave {b} of them to {q}. how many {o}s does {p} have left?", [(a, "-", b)])
            )  # fmt: skip
        elif name == "SingleEq":
            text, steps = (
                (f"{p} bought some {o}s. {p} had {a} {o}s before and has {b} now. how many {o}s did {p} buy?",
                 [(b, "-", a)])
                if kind else
                (f"{p} has {a} {o}s and {q} has {b} {o}s. how many {o}s do they have together?", [(a, "+", b)])
            )  # fmt: skip
        elif name == "MultiArith":
            text, steps = (
                (f"{p} had {a} {o}s and found {b} more. then {p} lost {c} of them. how many {o}s are left?",
                 [(a, "+", b), (-1, "-", c)])
                if kind else
                (f"there are {m} boxes with {n} {o}s in each box. how many {o}s are there?", [(m, "*", n)])
            )  # fmt: skip
        elif name == "gsm8k":
            text, steps = (
                (f"{p} has {m} bags with {n} {o}s in each bag. {p} gives {c} {o}s to {q}. "
                 f"how many {o}s does {p} have left?", [(m, "*", n), (-1, "-", c)])
                if kind else
                (f"{p} makes {m} {o}s every day for {n} days, then buys {c} more. how many {o}s does {p} have?",
                 [(m, "*", n), (-1, "+", c)])
            )  # fmt: skip
        elif name == "SVAMP":
            text, steps = (
                (f"{p} gave {b} {o}s to {q} and now has {a} {o}s left. how many {o}s did {p} have at first?",
                 [(a, "+", b)])
                if kind else
                (f"{p} has {a} {o}s and {c} {o2}s. {p} gets {b} more {o}s. how many {o}s does {p} have?",
                 [(a, "+", b)])
            )  # fmt: skip
        else:  # AQuA
            text, steps = (f"{p} has {m} boxes with {n} {o}s in each box. how many {o}s does {p} have?",
                           [(m, "*", n)])  # fmt: skip
        chain = _solve(steps)
        if chain is not None:
            break
    value = chain[-1][3]
    if name == "AQuA":
        options = sorted(rng.sample([value + d for d in range(-6, 7) if d and value + d > 0], 4) + [value])
        letter = "ABCDE"[options.index(value)]
        text += " Answer Choices: " + " ".join(f"({L}) {v}" for L, v in zip("ABCDE", options))
        return {"instruction": text, "input": "", "output": _rationale(chain, letter), "answer": letter}
    # The real sets mix "7" and "7.0" answers; keep both forms so extraction handles either.
    answer = f"{value}.0" if name in ("AddSub", "SingleEq", "MultiArith") else str(value)
    return {"instruction": text, "input": "", "output": _rationale(chain, str(value)), "answer": answer}


_COMMONSENSE: dict[str, Callable[[World, random.Random, str], Record]] = {
    "boolq": _boolq,
    "piqa": _piqa,
    "social_i_qa": _social_i_qa,
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "ARC-Easy": _arc_easy,
    "ARC-Challenge": _arc_challenge,
    "openbookqa": _openbookqa,
}


def _generate(kind: str, name: str, rng: random.Random, split: str) -> Record:
    if kind == "commonsense":
        return _COMMONSENSE[name](build_world(), rng, split)
    return _math_problem(name, rng)


def _distinct(kind: str, name: str, rng: random.Random, split: str, n: int, seen: set[str]) -> list[Record]:
    """n records whose instructions are new to `seen` (updated); small fact pools may repeat a question."""
    out: list[Record] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        rec = _generate(kind, name, rng, split)
        if rec["instruction"] not in seen:
            seen.add(rec["instruction"])
            out.append(rec)
    if len(out) < n:
        raise ValueError(f"{kind}/{name}: only {len(out)} distinct {split} questions, asked for {n}")
    return out


def make_suite(
    kind: str, n_train: int, n_test: int, seed: int = 0
) -> tuple[list[Record], dict[str, list[Record]]]:
    """(training records mixed over the test sets' formats, {test set: records}); deterministic in the args."""
    if kind not in TEST_SETS:
        raise ValueError(f"unknown suite kind {kind!r}; expected one of {sorted(TEST_SETS)}")
    rng = random.Random(f"{kind}-{seed}")
    seen: set[str] = set()
    # Test sets first, so training questions are drawn distinct from them.
    tests = {name: _distinct(kind, name, rng, "test", n_test, seen) for name in TEST_SETS[kind]}
    names = TEST_SETS[kind]
    per_set = [n_train // len(names) + (i < n_train % len(names)) for i in range(len(names))]
    train = [r for name, k in zip(names, per_set) for r in _distinct(kind, name, rng, "train", k, seen)]
    rng.shuffle(train)
    return train, tests


def _write_json(path: Path, obj: object) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def write_suite(kind: str, out_dir: str | Path, n_train: int | None = None, n_test: int | None = None,
                seed: int = 0) -> Path:  # fmt: skip
    """Write `kind`'s training file and test sets under `out_dir` (LLM-Adapters layout); returns out_dir."""
    default_train, default_test = DEFAULT_SIZES[kind] if kind in DEFAULT_SIZES else (0, 0)
    n_train = default_train if n_train is None else n_train
    n_test = default_test if n_test is None else n_test
    out = Path(out_dir)
    train, tests = make_suite(kind, n_train, n_test, seed)
    for name, records in tests.items():
        _write_json(out / "dataset" / name / "test.json", records)
    _write_json(out / TRAIN_FILES[kind], train)
    # Written last: its presence (with matching args) marks a complete suite for ensure_suite.
    _write_json(out / f".{kind}.meta.json", _meta(kind, n_train, n_test, seed))
    return out


def _meta(kind: str, n_train: int, n_test: int, seed: int) -> dict[str, object]:
    return {"kind": kind, "n_train": n_train, "n_test": n_test, "seed": seed, "version": SYNTHETIC_VERSION}


def ensure_suite(kind: str, root: str | Path, n_train: int | None = None, n_test: int | None = None,
                 seed: int = 0) -> Path:  # fmt: skip
    """`root` holding `kind`'s suite, generated on first use and when the args or the generator change."""
    root = Path(root)
    default_train, default_test = DEFAULT_SIZES.get(kind, (0, 0))
    want = _meta(kind, default_train if n_train is None else n_train,
                 default_test if n_test is None else n_test, seed)  # fmt: skip
    meta = root / f".{kind}.meta.json"
    if meta.exists() and json.loads(meta.read_text()) == want:
        return root
    return write_suite(kind, root, want["n_train"], want["n_test"], seed)  # type: ignore[arg-type]
