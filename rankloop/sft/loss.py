"""SFT's math as pure tensor functions: the masked next-token loss and where to read it.

Supervised fine-tuning maximises the log-likelihood of the demonstrated response given its prompt,
    L(θ) = − Σ_t m_t · log π_θ(y_t | y_<t)  /  Σ_t m_t,
the language-modelling objective (Radford et al. 2018, eq. 1) restricted by the mask m to the
response tokens (InstructGPT, Ouyang et al. 2022, §3.5: "We fine-tune GPT-3 on our labeler
demonstrations using supervised learning"); for a conversation m covers the assistant turns only.

Shapes: B = sequences, T = tokens, N = trained tokens of a batch, V = vocabulary, H = hidden size.
Logits are taken only at the N positions that predict a trained token — the output layer (H × V)
never runs on prompt tokens.

Reductions: ``sft_loss`` divides the summed loss by ``num_tokens``, by default the batch's own
count; passing the trained-token count of the whole optimiser step (all micro-batches, all
processes) makes gradient accumulation and data parallelism reproduce one big batch exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def target_positions(trained: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the loss reads: trained (B, T) bool, True where a token is a target. Token t is
    predicted by position t − 1, so the first token is never a target. Returns (N,) row and
    (N,) column indices of the predicting positions, row-major."""
    mask = trained.clone()
    mask[:, 0] = False
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols - 1


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log softmax(logits)[target], in float32: logits (N, V), targets (N,) → (N,)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def sft_loss(logits: torch.Tensor, targets: torch.Tensor,
             num_tokens: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, Σ nll): loss = Σ_i −log π(y_i) / num_tokens over the N trained tokens (default N).
    logits (N, V), targets (N,). The sum is returned detached, for metrics."""
    nll = token_nll(logits, targets)  # (N,)
    n = targets.numel() if num_tokens is None else num_tokens
    return nll.sum() / n, nll.detach().sum()


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token); inf past float range."""
    return math.exp(mean_nll) if mean_nll < 700 else math.inf
