"""Choosing which prompts go to labelers: reward-model uncertainty against random choice.

Labels are the expensive part of RLHF, so after the first round the loop can spend its label
budget where the current reward model is least sure. Two measures of uncertainty over a prompt's
K candidates:

- ``spread``: the reward model's own doubt. With scores ``s_i`` the Bradley–Terry probability that
  ``i`` beats ``j`` is ``p_ij = σ(s_i − s_j)``; the prompt's uncertainty is the mean of
  ``p_ij (1 − p_ij)`` over its pairs — highest when the K scores bunch together.
- ``ensemble``: disagreement among an ensemble of reward heads. M linear heads are fitted on the
  reward model's last-token features, each on a bootstrap resample of the rankings labeled so far
  (Bradley–Terry loss); the uncertainty is the mean over pairs of the heads' standard deviation of
  ``p_ij``. This is the query-by-committee view: heads agree where the labels pin the answer down.

``random`` draws uniformly. Which one wins is an empirical question on each task:
``bench/quickstart.py`` measures held-out reward-model accuracy for each at the same label budget,
and the loop's default (``selection = "random"``) changes only where that measurement says so.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from rankloop.records import Candidate, Prompt

METHODS = ("random", "spread", "ensemble")


def _group(cands: Sequence[Candidate]) -> dict[str, list[Candidate]]:
    by: dict[str, list[Candidate]] = {}
    for c in cands:
        by.setdefault(c.prompt_id, []).append(c)
    return by


def _features(scorer, prompts: list, responses: list[str], batch_size: int = 64):
    """Last-token hidden states of the reward model's backbone, and its scores: (N, H), (N,)."""
    import torch

    from rankloop.models import unwrap_model
    from rankloop.ops import last_token_index
    from rankloop.reward.model import encode_texts, pad_batch, render

    m = unwrap_model(scorer.model)
    backbone = getattr(m, m.base_model_prefix)
    seqs = encode_texts(scorer.tokenizer, [render(scorer.tokenizer, p, r) for p, r in zip(prompts, responses)],
                        scorer.max_length)
    feats, scores = [], []
    with torch.no_grad():
        for s in range(0, len(seqs), batch_size):
            ids, att = pad_batch(seqs[s:s + batch_size], scorer.tokenizer.pad_token_id)
            h = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            last = h[torch.arange(h.size(0)), last_token_index(att)]  # (b, H)
            feats.append(last.float())
            scores.append(m.score(last).squeeze(-1).float())
    return torch.cat(feats), torch.cat(scores)


def spread_uncertainty(scores_by_prompt: dict[str, list[float]]) -> dict[str, float]:
    """Mean over candidate pairs of p (1 − p), p = σ(s_i − s_j)."""
    import math

    out = {}
    for pid, s in scores_by_prompt.items():
        vals = []
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                p = 1 / (1 + math.exp(-(s[i] - s[j])))
                vals.append(p * (1 - p))
        out[pid] = sum(vals) / len(vals) if vals else 0.0
    return out


def fit_head_ensemble(feats_by_row: list, ranks_by_row: list[list[int]], heads: int = 8, steps: int = 200,
                      weight_decay: float = 1e-2, seed: int = 0):
    """M linear heads (H → 1), each fitted on a bootstrap resample of the rankings with the
    all-pairs Bradley–Terry loss. ``feats_by_row[r]``: (K_r, H); ``ranks_by_row[r]``: tie-group
    ranks, 0 = best. Returns a (M, H) weight matrix and (M,) biases."""
    import torch

    g = torch.Generator().manual_seed(seed)
    # All (better, worse) pairs of each ranking, as index pairs into one stacked feature matrix.
    X = torch.cat(feats_by_row)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    X = (X - mu) / sd
    pairs_by_row, off = [], 0
    for f, r in zip(feats_by_row, ranks_by_row):
        pr = [(off + i, off + j) for i in range(len(r)) for j in range(len(r)) if r[i] < r[j]]
        pairs_by_row.append(pr)
        off += f.size(0)
    W = torch.zeros(heads, X.size(1))
    for m in range(heads):
        rows = torch.randint(len(pairs_by_row), (len(pairs_by_row),), generator=g).tolist()
        pr = [p for r in rows for p in pairs_by_row[r]]
        if not pr:
            continue
        a = torch.tensor([p[0] for p in pr])
        b = torch.tensor([p[1] for p in pr])
        w = (torch.randn(X.size(1), generator=g) * 0.01).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=0.05)
        for _ in range(steps):
            d = (X[a] - X[b]) @ w
            loss = torch.nn.functional.softplus(-d).mean() + weight_decay * (w * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        W[m] = w.detach()
    return W, mu, sd


def ensemble_uncertainty(W, mu, sd, feats_by_prompt: dict[str, object]) -> dict[str, float]:
    """Mean over candidate pairs of the heads' std of σ(h(x_i) − h(x_j))."""
    import torch

    out = {}
    for pid, f in feats_by_prompt.items():
        s = ((f - mu) / sd) @ W.T  # (K, M)
        vals = []
        for i in range(s.size(0)):
            for j in range(i + 1, s.size(0)):
                vals.append(torch.sigmoid(s[i] - s[j]).std().item())
        out[pid] = sum(vals) / len(vals) if vals else 0.0
    return out


def select_prompts(pool: list[Prompt], cands: Sequence[Candidate], budget: int, method: str = "random",
                   reward_model: str | Path | None = None, labeled: Sequence[str | Path] = (), seed: int = 0,
                   k: int | None = None) -> tuple[list[Prompt], dict]:
    """The ``budget`` prompts of ``pool`` to label, and how they were chosen.

    Prompts with fewer than two candidates cannot be ranked and are never chosen.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    by = _group(cands)
    eligible = [p for p in pool if len(by.get(p.id, [])) >= 2]
    if budget >= len(eligible):
        return eligible, {"eligible": len(eligible)}
    rng = random.Random(seed)
    if method == "random" or reward_model is None:
        return rng.sample(eligible, budget), {"eligible": len(eligible)}

    from rankloop.reward.model import RewardScorer

    scorer = RewardScorer.from_pretrained(reward_model)
    flat = [(p, c) for p in eligible for c in by[p.id]]
    feats, scores = _features(scorer, [p.content for p, _ in flat], [c.text for _, c in flat])
    idx_by_prompt: dict[str, list[int]] = {}
    for i, (p, _) in enumerate(flat):
        idx_by_prompt.setdefault(p.id, []).append(i)
    if method == "spread":
        unc = spread_uncertainty({pid: scores[ix].tolist() for pid, ix in idx_by_prompt.items()})
    else:
        from rankloop.io import read_preferences

        examples = [e for path in labeled for e in read_preferences(path)]
        if not examples:
            return rng.sample(eligible, budget), {"eligible": len(eligible), "fallback": "no labels yet"}
        ex_feats = []
        ex_ranks = []
        # Features of the labeled candidates, in each ranking's order.
        texts = [(e.prompt, t) for e in examples for t in e.texts_in_rank_order()[0]]
        f_all, _ = _features(scorer, [p for p, _ in texts], [t for _, t in texts])
        off = 0
        for e in examples:
            _, ranks = e.texts_in_rank_order()
            ex_feats.append(f_all[off:off + len(ranks)])
            ex_ranks.append(ranks)
            off += len(ranks)
        W, mu, sd = fit_head_ensemble(ex_feats, ex_ranks, seed=seed)
        unc = ensemble_uncertainty(W, mu, sd, {pid: feats[ix] for pid, ix in idx_by_prompt.items()})
    # Most uncertain first; random tie-break so equal scores do not follow file order.
    keyed = sorted(eligible, key=lambda p: (-unc[p.id], rng.random()))
    chosen = keyed[:budget]
    vals = sorted(unc.values())
    return chosen, {"eligible": len(eligible), "uncertainty_chosen_mean": sum(unc[p.id] for p in chosen) / budget,
                    "uncertainty_pool_median": vals[len(vals) // 2]}
