"""Aggregation of per-question evaluation rows into per-set accuracies and the unweighted average."""

from __future__ import annotations


def summarize_set(rows: list[dict], seconds: float) -> dict:
    """{accuracy, n, correct, questions_per_s} (plus accuracy_authors_rule where rows carry it)."""
    n = len(rows)
    correct = sum(row["correct"] for row in rows)
    summary = {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "questions_per_s": n / seconds if seconds > 0 else float("inf"),
    }
    if rows and "correct_authors" in rows[0]:
        summary["accuracy_authors_rule"] = sum(row["correct_authors"] for row in rows) / n
    return summary


def macro_average(per_set: dict[str, dict]) -> float:
    """The unweighted mean of the per-set accuracies (the paper's "average")."""
    assert per_set, "no test sets to average"
    return sum(s["accuracy"] for s in per_set.values()) / len(per_set)
