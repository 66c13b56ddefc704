"""Token math that sampling, the reward model, SFT, DPO and RL all use: pure tensor functions.

Shapes: B rows, T positions, V vocabulary. A ``mask`` (B, T) is 1 on the positions that count and
0 on padding; every reduction here is masked.
"""

from __future__ import annotations

import torch


# ---------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: float | torch.Tensor | None = None) -> torch.Tensor:
    """Σ x·mask / n, with n = Σ mask unless given (0-d tensor)."""
    n = mask.sum() if num_tokens is None else num_tokens
    return (x * mask).sum() / n


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        if n < 2:
            raise ValueError("masked_var needs at least 2 unmasked entries for the unbiased variance")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries; masked-out entries become 0.

    ``shift_mean = False`` only rescales (used for rewards, whose mean carries signal).
    A single masked entry (batch size 1, a 1-token response) has no spread: its biased variance 0
    gives x − mean = 0 (shifted) or x itself (unshifted) instead of the unbiased variance's error.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=bool(mask.sum() > 1))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ---------------------------------------------------------------- log-probs, entropy, positions


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: (B, T, V), (B, T) → (B, T).

    ``logits[:, t]`` must be the logits that *predicted* ``tokens[:, t]`` (i.e. already shifted).
    Computed as logit − logsumexp so the (B, T, V) log-softmax is never materialised.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) per position: (B, T, V) → (B, T). H = logsumexp(z) − Σ p z."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B,) index of the last 1 in each row (0 for an all-zero row)."""
    T = mask.size(1)
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.zeros_like(idx)).max(dim=1).values


# ---------------------------------------------------------------- the LM head in chunks (memory)


def head_logprobs(hidden: torch.Tensor, head, tokens: torch.Tensor, chunk: int = 0, temperature: float = 1.0,
                  entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(hidden) / temperature)[token] (and the entropy) without the whole logits.

    hidden (..., H), tokens (...) → log-probs (...) float32, entropy (...) float32 or None. ``head``
    maps (n, H) → (n, V) (the LM's output layer). With ``chunk = 0`` it is
    ``logprobs_from_logits(head(hidden) / temperature, tokens)``, the same arithmetic. With
    ``chunk > 0`` the tokens are taken ``chunk`` at a time, each chunk's head, log-softmax and
    gather under ``torch.utils.checkpoint``: the forward keeps only each chunk's (chunk,) results,
    and the backward recomputes one chunk's (chunk, V) logits at a time — peak logits memory
    chunk·V instead of n·V, for one more head matmul per chunk (the idea of TRL 1.15's fused LM
    head and Liger's fused linear cross-entropy). Equal to the plain computation up to float
    rounding (tests/test_memory.py); not bit-identical, as a matmul on fewer rows may sum in
    another order.
    """
    shape = tokens.shape
    h, t = hidden.reshape(-1, hidden.size(-1)), tokens.reshape(-1)

    def piece(h_c: torch.Tensor, t_c: torch.Tensor):
        logits = head(h_c)
        if temperature != 1.0:
            logits = logits / temperature
        lp = logprobs_from_logits(logits, t_c)
        return (lp, entropy_from_logits(logits)) if entropy else (lp,)

    if chunk <= 0 or t.numel() <= chunk:
        out = piece(h, t)
    else:
        from torch.utils.checkpoint import checkpoint

        parts = [checkpoint(piece, h[s:s + chunk], t[s:s + chunk], use_reentrant=False)
                 if torch.is_grad_enabled() else piece(h[s:s + chunk], t[s:s + chunk])
                 for s in range(0, t.numel(), chunk)]
        out = tuple(torch.cat(col) for col in zip(*parts))
    return out[0].reshape(shape), (out[1].reshape(shape) if entropy else None)
