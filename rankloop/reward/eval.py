"""Evaluating a reward model against held-out human rankings.

Metrics (over rankings of any K, ties allowed). Two copies of one text are never a pair
(``rankloop.records``): their pair counts in none of the metrics, as in the loss.

- ``pairwise_accuracy``: over every pair of differently-ranked candidates, the fraction the model
  orders the same way (r_w > r_l; an exact score tie counts ½). The figure InstructGPT and every
  pairwise trainer report.
- ``exact_ranking_accuracy``: the fraction of rankings whose every pair is ordered correctly
  (r_w > r_l strictly: a score tie is not correct). At K = 2 it equals ``pairwise_accuracy`` only
  when no pair's scores tie — a tie counts ½ there and 0 here.
- ``kendall_tau``: Kendall's τ-b between the scores and the human order, averaged over rankings
  (τ-b corrects for ties on either side; a ranking that is one tie group is skipped).
- ``mean_margin``: the mean of r_w − r_l over pairs (in normalised units when the model has
  stored normalisation).
- ``scores``: mean, std, min, max of every candidate's score; ``best_mean`` / ``worst_mean``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rankloop.records import RankedExample


@dataclass
class EncodedRanking:
    """One ranking, tokenised: ``ids[k]`` are candidate k's tokens, ``ranks[k]`` its tie group,
    ``text_class[k]`` its text's class (``rankloop.records.text_classes``; None when no text repeats)."""

    ids: list[list[int]]
    ranks: list[int]
    margin: float | None = None
    text_class: list[int] | None = None

    @property
    def max_len(self) -> int:
        return max(len(s) for s in self.ids)


def encode_examples(examples: Sequence[RankedExample], tokenizer, max_length: int) -> list[EncodedRanking]:
    """Tokenise every candidate once (render prompt + response, truncate on the left)."""
    from rankloop.records import text_classes
    from rankloop.reward.model import encode_texts, render

    texts, spans = [], []
    for ex in examples:
        cand_texts, ranks = ex.texts_in_rank_order()
        classes = text_classes(cand_texts)
        spans.append((len(texts), len(cand_texts), ranks, ex.margin,
                      classes if classes != list(range(len(classes))) else None))
        texts.extend(render(tokenizer, ex.prompt, t) for t in cand_texts)
    ids = encode_texts(tokenizer, texts, max_length) if texts else []
    return [EncodedRanking(ids[s : s + k], ranks, margin, tc) for s, k, ranks, margin, tc in spans]


def kendall_tau_b(x: Sequence[float], y: Sequence[float], skip: Sequence[int] | None = None) -> float | None:
    """Kendall's τ-b of two equal-length sequences; ``None`` when either is constant. Pairs i, j with
    ``skip[i] == skip[j]`` (copies of one text) are left out."""
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            if skip is not None and skip[i] == skip[j]:
                continue
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom > 0 else None


def ranking_metrics(scores: Sequence[Sequence[float]], ranks: Sequence[Sequence[int]],
                    text_class: Sequence[Sequence[int] | None] | None = None) -> dict:
    """The metrics above from per-ranking score lists and tie-group ranks (0 = best); ``text_class``
    (per ranking, as ``EncodedRanking.text_class``) marks copies of one text, which make no pair."""
    correct = pairs = 0.0
    margin_sum = 0.0
    exact = with_pairs = 0
    taus: list[float] = []
    flat: list[float] = []
    best: list[float] = []
    worst: list[float] = []
    classes = text_class if text_class is not None else [None] * len(scores)
    for s, r, tc in zip(scores, ranks, classes):
        flat.extend(s)
        ok = True
        n = 0
        for i in range(len(s)):
            for j in range(len(s)):
                if r[i] < r[j] and (tc is None or tc[i] != tc[j]):
                    d = s[i] - s[j]
                    correct += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
                    ok = ok and d > 0
                    margin_sum += d
                    n += 1
        pairs += n
        if n:
            with_pairs += 1
            exact += ok
            best.extend(v for v, k in zip(s, r) if k == min(r))
            worst.extend(v for v, k in zip(s, r) if k == max(r))
        tau = kendall_tau_b(s, [-k for k in r], tc)
        if tau is not None:
            taus.append(tau)
    t = torch.tensor(flat, dtype=torch.float64) if flat else torch.zeros(0, dtype=torch.float64)
    return {
        "rankings": len(scores),
        "pairs": int(pairs),
        "pairwise_accuracy": correct / pairs if pairs else float("nan"),
        "exact_ranking_accuracy": exact / with_pairs if with_pairs else float("nan"),
        "kendall_tau": sum(taus) / len(taus) if taus else float("nan"),
        "mean_margin": margin_sum / pairs if pairs else float("nan"),
        "scores": {
            "mean": t.mean().item() if len(t) else float("nan"),
            "std": t.std(unbiased=False).item() if len(t) else float("nan"),
            "min": t.min().item() if len(t) else float("nan"),
            "max": t.max().item() if len(t) else float("nan"),
            "best_mean": sum(best) / len(best) if best else float("nan"),
            "worst_mean": sum(worst) / len(worst) if worst else float("nan"),
        },
    }


@torch.no_grad()
def score_encoded(model, encoded: Sequence[EncodedRanking], pad_id: int, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> list[list[float]]:
    """Raw scores of every candidate of every ranking (one forward per candidate)."""
    from rankloop.reward.model import pad_batch, sequence_scores

    flat = [(e, k) for e, enc in enumerate(encoded) for k in range(len(enc.ids))]
    order = sorted(range(len(flat)), key=lambda i: len(encoded[flat[i][0]].ids[flat[i][1]]))
    out = torch.empty(len(flat))
    was_training = model.training
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, att = pad_batch([encoded[flat[i][0]].ids[flat[i][1]] for i in idx], pad_id)
        out[idx] = sequence_scores(model, ids.to(device), att.to(device)).float().cpu()
    model.train(was_training)
    res: list[list[float]] = []
    pos = 0
    for enc in encoded:
        res.append(out[pos : pos + len(enc.ids)].tolist())
        pos += len(enc.ids)
    return res


def evaluate_reward_model(
    model_dir: str | Path,
    data_path: str | Path,
    batch_size: int = 32,
    max_length: int | None = None,
    fmt: str | None = None,
    skip_invalid: bool = False,
    normalise: bool = True,
    device: str = "cpu",
    output: str | Path | None = None,
) -> dict:
    """Score every candidate of ``data_path`` with the model in ``model_dir``; return the metrics
    (see the module docstring), and write them as JSON to ``output`` when given."""
    from rankloop.io import ReadStats, read_preferences, write_json
    from rankloop.reward.model import RewardScorer

    stats = ReadStats()
    examples = read_preferences(data_path, fmt=fmt, skip_invalid=skip_invalid, stats=stats)
    scorer = RewardScorer.from_pretrained(model_dir, device=device, max_length=max_length)
    encoded = encode_examples(examples, scorer.tokenizer, scorer.max_length)
    raw = score_encoded(scorer.model, encoded, scorer.tokenizer.pad_token_id, batch_size, device)
    norm = scorer.normalisation if normalise else None
    scores = [[(v - norm.offset) / norm.scale for v in s] for s in raw] if norm else raw
    metrics = ranking_metrics(scores, [e.ranks for e in encoded], [e.text_class for e in encoded])
    metrics.update({
        "model": str(model_dir),
        "data": str(data_path),
        "normalised": norm is not None,
        "skipped": stats.skipped,
        "max_length": scorer.max_length,
    })
    if output is not None:
        write_json(output, metrics)
    return metrics
