"""The synthetic commonsense suite: one generator per LLM-Adapters test set, each asking about one fact.

A generator `(world, rng, split, index) -> record` asks, in its test set's real instruction and
label format, about the `index`-th subject (cycling) of one relation's `split` facts ("train" or
"test"): a set asks about each of its facts equally often. Its options are the relation's values
in their fixed order (world.VALUES), so the gold label follows from the fact, and since values
are dealt evenly over subjects, the labels are balanced: the best constant answer scores about
chance, and only a model that knows the held-out facts scores above it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from perft_exp.data.synthetic.world import PEOPLE, VALUES, World

Record = dict[str, str]
Generator = Callable[[World, random.Random, str, int], Record]


def record(instruction: str, label: str) -> Record:
    """A record whose output is `the correct answer is <label>`."""
    return {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is {label}",
        "answer": label,
    }


def multiple_choice(lead: str, question: str, word: str, options: list[str], correct: int) -> Record:
    """The LLM-Adapters layout: "<lead>: <question>", "<Word>1: ..." lines, "Answer format: word1/word2"."""
    labels = [f"{word.lower()}{i}" for i in range(1, len(options) + 1)]
    lines = [f"{lead}: {question}"] + [f"{word}{i}: {o}" for i, o in enumerate(options, 1)]
    lines.append("Answer format: " + "/".join(labels))
    return record("\n\n".join(lines), labels[correct])


def fixed_choice(
    w: World,
    rng: random.Random,
    split: str,
    index: int,
    relation: str,
    questions: tuple[str, ...],
    option: str | dict[str, str],
    lead: str,
    word: str,
) -> Record:
    """The index-th subject's `relation`, asked with a random one of `questions` ({s}); the options are
    the relation's values in order, each phrased by `option` (a template with {v}, or value -> text)."""
    subjects = w.subjects(relation, split)
    subject = subjects[index % len(subjects)]
    options = [option[v] if isinstance(option, dict) else option.format(v=v) for v in VALUES[relation]]
    correct = VALUES[relation].index(w.value(relation, subject))
    return multiple_choice(lead, rng.choice(questions).format(s=subject), word, options, correct)


def asking(
    relation: str, questions: tuple[str, ...], option: str | dict[str, str], lead: str, word: str
) -> Generator:
    """A set that asks the index-th subject's `relation` in one of `questions` (`fixed_choice`)."""

    def generate(w: World, rng: random.Random, split: str, index: int) -> Record:
        return fixed_choice(w, rng, split, index, relation, questions, option, lead, word)

    return generate


CHOOSE = "Please choose the correct answer to the question"


def boolq(w: World, rng: random.Random, split: str, index: int) -> Record:
    """Is the subject heavy (or big)? The asked value is fixed, so the answer is the fact itself,
    like every other set's label: comparing a stated value with a recalled one is another skill."""
    relation = ("weight", "size")[index % 2]
    subjects = w.subjects(relation, split)
    subject = subjects[index // 2 % len(subjects)]
    asked = VALUES[relation][0]
    template = rng.choice(
        (
            "is the {s} {v}?",
            "would you call the {s} {v}?",
            "is it true that the {s} is {v}?",
            "do people say the {s} is {v}?",
        )
    )
    truth = w.value(relation, subject) == asked
    question = template.format(s=subject, v=asked)
    instruction = f"Please answer the following question with true or false, question: {question}"
    return record(instruction + "\n\nAnswer format: true/false", "true" if truth else "false")


_hobby = asking(
    "hobby",
    (
        "{s} has a free afternoon. what will {s} most likely do?",
        "{s} finished work early. what does {s} want to do next?",
        "it is the weekend and {s} is bored. what will {s} do?",
        "{s} is on holiday. how will {s} spend the day?",
    ),
    "go and {v}",
    CHOOSE,
    "Answer",
)
_pet = asking(
    "pet",
    (
        "{s} comes home after work. who is waiting at the door?",
        "{s} buys food for a pet. which pet will eat it?",
        "{s} is going on a trip. who needs a sitter?",
        "what animal sleeps in the house of {s}?",
    ),
    "a {v}",
    CHOOSE,
    "Answer",
)


def social_i_qa(w: World, rng: random.Random, split: str, index: int) -> Record:
    """Hobbies and pets by turns, each person asked about both."""
    return (_hobby if index % 2 == 0 else _pet)(w, rng, split, index // 2)


def hellaswag(w: World, rng: random.Random, split: str, index: int) -> Record:
    """A sentence about an object to complete with what it is used for."""
    person = rng.choice(PEOPLE)
    contexts = (
        f"{person} picks up the {{s}} and",
        f"{person} takes the {{s}} from the shelf, then",
        f"{person} holds the {{s}} and",
        f"with the {{s}} in hand, {person}",
    )
    return fixed_choice(
        w,
        rng,
        split,
        index,
        "use",
        contexts,
        "starts to {v}.",
        "Please choose the correct ending to complete the given sentence",
        "Ending",
    )


piqa = asking(
    "weight",
    (
        "you want to carry the {s} home. what do you do?",
        "how should you move the {s}?",
        "to take the {s} upstairs, you should",
        "you need the {s} in the next room. what is the best way?",
    ),
    {"heavy": "ask a friend and carry it with both arms", "light": "pick it up with one hand"},
    "Please choose the correct solution to the question",
    "Solution",
)
winogrande = asking(
    "size",
    (
        "the {s} looks _ next to a box.",
        "everyone knows that the {s} is _ .",
        "when you see the {s}, it looks _ .",
        "in the shop, the {s} is a _ thing.",
    ),
    "{v}",
    "Please choose the correct answer to fill in the blank to complete the given sentence",
    "Option",
)
arc_easy = asking(
    "material",
    (
        "which material is the {s} made of?",
        "what is the {s} made of?",
        "what was used to build the {s}?",
        "the {s} is made of which material?",
    ),
    "{v}",
    CHOOSE,
    "Answer",
)
arc_challenge = asking(
    "room",
    (
        "where is the {s} usually kept?",
        "in which room would you look for the {s}?",
        "where does the {s} belong?",
        "you want the {s}. which room do you go to?",
    ),
    "the {v}",
    CHOOSE,
    "Answer",
)
openbookqa = asking(
    "color",
    (
        "what color is the {s}?",
        "which color does the {s} have?",
        "you look at the {s}. what color do you see?",
        "the {s} is painted in which color?",
    ),
    "{v}",
    CHOOSE,
    "Answer",
)


# Which relations each test set asks about.
ASKS: dict[str, tuple[str, ...]] = {
    "boolq": ("weight", "size"),
    "piqa": ("weight",),
    "social_i_qa": ("hobby", "pet"),
    "hellaswag": ("use",),
    "winogrande": ("size",),
    "ARC-Easy": ("material",),
    "ARC-Challenge": ("room",),
    "openbookqa": ("color",),
}

GENERATORS: dict[str, Generator] = {
    "boolq": boolq,
    "piqa": piqa,
    "social_i_qa": social_i_qa,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "ARC-Easy": arc_easy,
    "ARC-Challenge": arc_challenge,
    "openbookqa": openbookqa,
}
assert set(ASKS) == set(GENERATORS)
