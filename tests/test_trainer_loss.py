"""The trainer's loss at label positions only: the LM head runs where the loss reads it, and the loss
(with the base router aux loss) equals the one transformers computes from every position."""

from __future__ import annotations

import pytest
import torch
from moe_models import ARCHS, VOCAB, tiny_moe

from perft_exp.data.collate import IGNORE_INDEX
from perft_exp.training.trainer import accepts_logits_to_keep, label_positions, next_token_loss


def _prompt_and_response_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths whose labels are their last few tokens (a response)."""
    g = torch.Generator().manual_seed(seed)
    lengths, responses = [9, 6, 11], [3, 2, 4]
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, (n, r) in enumerate(zip(lengths, responses)):
        ids[row, :n] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[row, :n] = 1
        labels[row, n - r : n] = ids[row, n - r : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_label_positions_are_those_before_a_label_in_any_row():
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 2:4] = 5
    labels[1, 5] = 7
    assert label_positions(labels).tolist() == [1, 2, 4]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_loss_at_label_positions_is_transformers_loss(arch):
    model = tiny_moe(arch)
    assert accepts_logits_to_keep(model)
    inputs = _prompt_and_response_batch()
    labels = inputs["labels"]
    full = model(**inputs, output_router_logits=True)
    positions = label_positions(labels)
    assert len(positions) < labels.shape[1] - 1  # the point: fewer logits than positions
    kept = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        output_router_logits=True,
        logits_to_keep=positions,
    )
    assert kept.logits.shape == (labels.shape[0], len(positions), full.logits.shape[-1])
    loss = next_token_loss(kept.logits, labels, positions) + model.config.router_aux_loss_coef * kept.aux_loss
    assert loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    # Gradient accumulation: a sum over the label tokens divided by the accumulated batch's count.
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    summed = model(**inputs, num_items_in_batch=torch.tensor(2 * n))
    assert next_token_loss(kept.logits, labels, positions, torch.tensor(2 * n)).item() == pytest.approx(
        summed.loss.item(), rel=1e-5
    )


def test_the_trainer_uses_it_and_logs_the_same_lm_loss(tmp_path, monkeypatch):
    """PerftTrainer with and without logits_at_labels: the same loss and LM-loss term from one batch."""
    from transformers import TrainingArguments

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # one process, no launcher
        monkeypatch.delenv(var, raising=False)

    from perft_exp import metric_schema as schema
    from perft_exp.training.trainer import PerftTrainer

    inputs = _prompt_and_response_batch(seed=3)
    losses, terms = [], []
    for on in (True, False):
        args = TrainingArguments(output_dir=str(tmp_path / str(on)), use_cpu=True, report_to=[])
        trainer = PerftTrainer(model=tiny_moe("olmoe"), args=args, logits_at_labels=on)
        assert (trainer.compute_loss_func is not None) == on
        trainer.model.train()
        losses.append(trainer.compute_loss(trainer.model, dict(inputs)).item())
        terms.append(trainer._terms[schema.LM_LOSS])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert terms[0] == pytest.approx(terms[1], rel=1e-5)
