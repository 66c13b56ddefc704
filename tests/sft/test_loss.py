"""SFT's math with hand-worked values."""

import math

import pytest
import torch

from rankloop.sft.loss import perplexity, sft_loss, target_positions, token_nll


def test_uniform_logits_cost_log_vocabulary_per_token():
    logits = torch.zeros(5, 7)
    loss, total = sft_loss(logits, torch.tensor([0, 1, 2, 3, 6]))
    assert loss.item() == pytest.approx(math.log(7))
    assert total.item() == pytest.approx(5 * math.log(7))
    assert perplexity(loss.item()) == pytest.approx(7.0)


def test_certain_prediction_costs_nothing_and_the_normaliser_is_the_callers():
    logits = torch.full((2, 4), -1e4)
    logits[0, 1] = logits[1, 3] = 0.0
    assert token_nll(logits, torch.tensor([1, 3])).abs().max() < 1e-6
    logits = torch.zeros(2, 4)
    loss, _ = sft_loss(logits, torch.tensor([0, 0]), num_tokens=8)  # 2 of the step's 8 trained tokens
    assert loss.item() == pytest.approx(2 * math.log(4) / 8)


def test_target_positions_read_the_token_before_and_never_the_first():
    trained = torch.tensor([[True, False, True, True], [False, True, False, False]])
    rows, cols = target_positions(trained)
    # token (0,0) is never a target; (0,2) is read at (0,1), (0,3) at (0,2), (1,1) at (1,0)
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [1, 2, 0]
    assert trained[0, 0]  # the input is left as it was


def test_perplexity_overflow_is_inf():
    assert perplexity(1000.0) == math.inf
