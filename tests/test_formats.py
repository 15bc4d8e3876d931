"""LLM-Adapters JSON loading: strict validation, test set names, contamination, the validation split."""

import json

import pytest

from perft_exp.data.formats import (
    COMMONSENSE_TEST_SETS,
    MATH_TEST_SETS,
    DataError,
    canonical_test_set,
    contaminated_test_sets,
    count_empty_answers,
    load_from_hub,
    load_test_sets,
    load_train,
    split_indices,
    split_validation,
)


def _record(i: int = 0, **overrides) -> dict:
    record = {
        "instruction": f"What is {i} + {i}?",
        "input": "",
        "output": f"{i} + {i} = {2 * i}. The answer is {2 * i}",
        "answer": str(2 * i),
    }
    record.update(overrides)
    return record


def _write(path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def test_load_train(tmp_path):
    records = [_record(i) for i in range(3)]
    _write(tmp_path / "math_10k.json", records)
    assert load_train(tmp_path, "math_10k") == records
    assert load_train(tmp_path, "math_10k.json") == records


def test_load_test_sets_case_insensitive_dirs_and_names(tmp_path):
    _write(tmp_path / "dataset" / "gsm8k" / "test.json", [_record(1)])
    _write(tmp_path / "dataset" / "arc-easy" / "test.json", [{"instruction": "q?", "answer": "answer1"}])
    sets = load_test_sets(tmp_path, ["GSM8K", "ARC-Easy"])
    assert list(sets) == ["gsm8k", "ARC-Easy"]
    assert sets["ARC-Easy"] == [{"input": "", "instruction": "q?", "answer": "answer1"}]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "invalid JSON"),
        ({"instruction": "q"}, "expected a JSON list"),
        ([], "no records"),
        ([_record(0), "a string"], "record 1 is a str"),
        (
            [_record(0), _record(1), {k: v for k, v in _record(2).items() if k != "output"}],
            "record 2.*'output'",
        ),
        ([_record(0), _record(1, answer=4)], "record 1.*'answer' is a int"),
        ([_record(0, input=None)], "record 0.*'input' is a NoneType"),
        ([_record(0), _record(1, instruction="  ")], "record 1 has an empty instruction"),
    ],
)
def test_bad_train_file_names_file_and_record(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    _write(path, payload)
    with pytest.raises(DataError, match=message) as err:
        load_train(tmp_path, "bad")
    assert str(path) in str(err.value)


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        load_train(tmp_path, "commonsense_170k")
    assert "commonsense_170k.json" in str(err.value)
    with pytest.raises(DataError, match=r"dataset/boolq/test.json: file not found"):
        load_test_sets(tmp_path, ["boolq"])


def test_test_record_without_answer_names_file_and_record(tmp_path):
    path = tmp_path / "dataset" / "piqa" / "test.json"
    _write(path, [{"instruction": "q", "answer": "solution1"}, {"instruction": "q"}])
    with pytest.raises(DataError, match="record 1 is missing field 'answer'") as err:
        load_test_sets(tmp_path, ["piqa"])
    assert str(path) in str(err.value)


def test_empty_answers_are_kept_for_training_and_left_out_of_scoring_and_counted(tmp_path):
    """The authors' loader keeps training records with an empty answer (training reads `output`); a test
    record without an answer cannot be scored. Neither fails the file."""
    records = [_record(0), _record(1, answer=""), _record(2, answer="  ")]
    _write(tmp_path / "math_50k.json", records)
    assert load_train(tmp_path, "math_50k") == records and count_empty_answers(records) == 2
    _write(tmp_path / "dataset" / "gsm8k" / "test.json", records)
    skipped = {}
    assert load_test_sets(tmp_path, ["gsm8k"], skipped=skipped)["gsm8k"] == [_record(0)]
    assert skipped == {"gsm8k": 2}


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_canonical_test_set():
    assert canonical_test_set("BoolQ") == "boolq"
    assert canonical_test_set("arc-challenge") == "ARC-Challenge"
    assert canonical_test_set("AQUA") == "AQuA"
    assert canonical_test_set("svamp") == "SVAMP"
    assert len(COMMONSENSE_TEST_SETS) == 8 and len(MATH_TEST_SETS) == 6
    with pytest.raises(DataError, match="allowed: boolq, piqa"):
        canonical_test_set("mmlu")


def test_contamination_flag():
    names = ["addsub", "MultiArith", "singleeq", "gsm8k", "AQuA", "SVAMP"]
    assert contaminated_test_sets("math_10k", names) == ["AddSub", "MultiArith", "SingleEq"]
    assert contaminated_test_sets("data/math_10k.json", ["SingleEq"]) == ["SingleEq"]
    assert contaminated_test_sets("math_50k", names) == []
    assert contaminated_test_sets("commonsense_170k", ["boolq"]) == []


def test_validation_split_is_the_authors_datasets_call():
    """The authors held out `data["train"].train_test_split(test_size=120, shuffle=True, seed=42)["test"]`."""
    import datasets

    records = [_record(i) for i in range(500)]
    theirs = datasets.Dataset.from_list(records).train_test_split(test_size=120, shuffle=True, seed=42)
    train, val = split_validation(records, 120, 42)
    assert val == list(theirs["test"]) and train == list(theirs["train"])
    train_idx, val_idx = split_indices(500, 120, 42)
    assert [records[i] for i in val_idx] == val and sorted(train_idx + val_idx) == list(range(500))


def test_split_validation_is_deterministic_and_disjoint():
    records = [_record(i) for i in range(500)]
    train, val = split_validation(records)
    assert len(val) == 120 and len(train) == 380
    assert split_validation(records) == (train, val)
    assert split_validation(records, seed=0)[1] != val
    answers = [r["answer"] for r in train + val]
    assert sorted(answers) == sorted(r["answer"] for r in records)


@pytest.mark.parametrize("val_size", [120, 200, 0])
def test_split_validation_too_small(val_size):
    with pytest.raises(DataError, match="val_size"):
        split_validation([_record(i) for i in range(120)], val_size=val_size)


def test_load_from_hub_is_importable():
    assert callable(load_from_hub)
