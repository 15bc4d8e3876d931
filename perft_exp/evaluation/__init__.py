"""Evaluation: generation / label scoring on the LLM-Adapters test sets, answer extraction, metrics."""

from perft_exp.evaluation.evaluator import MODES, evaluate
from perft_exp.evaluation.extract import extract_answer, extract_aqua_authors, is_correct

__all__ = ["MODES", "evaluate", "extract_answer", "extract_aqua_authors", "is_correct"]
