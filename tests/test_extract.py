"""Answer extraction and scoring: a table of tricky responses for every test set."""

import pytest

from perft_exp.data.formats import ALL_TEST_SETS, DataError
from perft_exp.evaluation import extract_answer, extract_aqua_authors, is_correct

# (dataset, response, expected extraction)
CASES = [
    # boolq: first of several candidates, case-blind, no match -> None
    ("boolq", "the correct answer is true", "true"),
    ("boolq", "The correct answer is FALSE, not true", "false"),
    ("boolq", "true or false? false", "true"),
    ("boolq", "the correct answer is yes", None),
    # piqa
    ("piqa", "the correct answer is solution2", "solution2"),
    ("piqa", "Solution1 is worse than solution2", "solution1"),
    ("piqa", "the correct answer is solution", None),
    # social_i_qa and the other answerN sets
    ("social_i_qa", "the correct answer is answer3", "answer3"),
    ("social_i_qa", "Answer5, or maybe answer1", "answer5"),
    ("social_i_qa", "the correct answer is", None),
    ("ARC-Easy", "the correct answer is answer4", "answer4"),
    ("ARC-Challenge", "answer2 answer1", "answer2"),
    ("ARC-Challenge", "the correct answer is 2", None),
    ("openbookqa", "the correct answer is ANSWER1.", "answer1"),
    ("openbookqa", "none of them", None),
    # hellaswag
    ("hellaswag", "the correct answer is ending4", "ending4"),
    ("hellaswag", "ending3 then ending1", "ending3"),
    ("hellaswag", "the ending is unclear", None),
    # winogrande
    ("winogrande", "the correct answer is option2", "option2"),
    ("winogrande", "Option1 fits better than option2", "option1"),
    ("winogrande", "the first option", None),
    # numeric sets: the last number, thousands commas dropped, decimals and negatives
    ("gsm8k", "She has 3 apples and buys 4 more. The answer is 7.", 7.0),
    ("gsm8k", "Total: 1,234,567 dollars", 1234567.0),
    ("gsm8k", "12 * 3 = 36\n36 / 8 = 4.5\nThe answer is 4.5", 4.5),
    ("gsm8k", "no numbers here", None),
    ("AddSub", "The temperature dropped to -12 degrees", -12.0),
    ("AddSub", "5 - 8 = -3. The answer is -3", -3.0),
    ("MultiArith", "The answer is 1,000.", 1000.0),
    ("MultiArith", "We need 3, 4 and 5 boxes", 5.0),
    ("SingleEq", "x = 0.25 and y = 2.75", 2.75),
    ("SingleEq", "", None),
    ("SVAMP", "He had 20 pencils; 20 - 7 = 13 left. The answer is 13.0", 13.0),
    ("SVAMP", "The answer is .5", 5.0),
    # AQuA: explicit statements win, the last one counts, never a capital inside a word
    ("AQuA", "Each train covers 60 km. The answer is (C)", "C"),
    ("AQuA", "Each of them is wrong. Answer: D", "D"),
    ("AQuA", "Distance = 120 km, so the answer is b", None),
    ("AQuA", "Distance = 120 km, so the answer is (b)", "B"),
    ("AQuA", "(A) is too small; (B) is too big. The correct option is E", "E"),
    ("AQuA", "(A) is too small; (D) fits", "D"),
    ("AQuA", "Answer Choices: (A) 1 (B) 2 (C) 3. The answer is B", "B"),
    ("AQuA", "Every Bus Costs Dollars, so C.", "C"),
    ("AQuA", "A train travels 60 km in an hour", None),
    ("AQuA", "BECAUSE Each Day Costs Extra", None),
]


@pytest.mark.parametrize(("dataset", "response", "expected"), CASES)
def test_extract_answer(dataset, response, expected):
    assert extract_answer(dataset, response) == expected


def test_every_test_set_has_cases():
    assert {case[0] for case in CASES} == set(ALL_TEST_SETS)


@pytest.mark.parametrize(
    ("response", "authors", "robust"),
    [
        ("Each train covers 60 km. The answer is (C)", "E", "C"),
        ("Distance = 120 km. The answer is (B)", "D", "B"),
        ("Both trains meet after 2 hours. The answer is (A)", "B", "A"),
        ("The answer is (C)", "C", "C"),
        ("Let's see: 5 + 5 = 10", None, None),
    ],
)
def test_aqua_authors_rule_differs_from_robust(response, authors, robust):
    assert extract_aqua_authors(response) == authors
    assert extract_answer("AQuA", response) == robust


def test_dataset_names_are_case_insensitive():
    assert extract_answer("BOOLQ", "the correct answer is true") == "true"
    assert extract_answer("arc-easy", "answer2") == "answer2"
    assert extract_answer("GSM8K", "The answer is 3") == 3.0
    with pytest.raises(DataError, match="allowed"):
        extract_answer("mmlu", "the answer is 3")


@pytest.mark.parametrize(
    ("dataset", "prediction", "label", "correct"),
    [
        ("gsm8k", 576.0, "576.0", True),
        ("gsm8k", 576.0005, "576", True),
        ("gsm8k", 576.01, "576", False),
        ("gsm8k", -3.0, "-3", True),
        ("gsm8k", None, "0", False),
        ("AddSub", 1000.0, "1,000", True),
        ("boolq", "true", " True ", True),
        ("boolq", "false", "true", False),
        ("boolq", None, "true", False),
        ("hellaswag", "ending2", "ending2", True),
        ("AQuA", "C", "c", True),
        ("AQuA", "C", "D", False),
        ("AQuA", None, "D", False),
    ],
)
def test_is_correct(dataset, prediction, label, correct):
    assert is_correct(dataset, prediction, label) is correct
