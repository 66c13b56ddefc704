"""Reward-model batches without padding: a ranking's candidates packed into rows.

On the synthetic benchmark data a fifth of a padded batch's positions are padding, and on real
data with long prompts the K copies of the prompt cost more still. ``pack_rankings`` builds a
``rankloop.packing.PackedBatch`` of the candidates of B rankings:

- causal backbones with ``share_prefix``: one *tree* segment per ranking — the tokens the K
  candidates share (the prompt) once, then each candidate's suffix as its own branch;
- otherwise (encoders, or no sharing): one segment per candidate.

Scores are read where the padded path reads them: causal models at each candidate's last token,
encoders (BERT- and RoBERTa-style) at each candidate's first token ([CLS]) through their own
pooler / classifier. Equal to ``sequence_scores`` on padded whole sequences to float rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rankloop.packing import PackedBatch, Segment, pack_segments, packed_hidden, supports_packing

# Encoders whose sequence-classification head reads the first token ([CLS] / <s>).
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens shared by all sequences at their start, leaving each at least one token of its own."""
    n = max(min(len(x) for x in seqs) - 1, 0)
    first = seqs[0]
    for i in range(n):
        if any(x[i] != first[i] for x in seqs):
            return i
    return n


def can_pack(model: nn.Module) -> bool:
    """The attention takes a 4D mask and, for encoders, we know how to apply the head to [CLS] states."""
    from rankloop.reward.model import _unwrap, is_causal_scorer

    m = _unwrap(model)
    return supports_packing(m) and (is_causal_scorer(m) or m.config.model_type in _ENCODER_TYPES)


def pack_rankings(groups: Sequence[Sequence[Sequence[int]]], pad_id: int, causal: bool, share_prefix: bool,
                  hidden_size: int) -> PackedBatch:
    """Pack the candidates of B rankings (``groups[b][k]`` = token ids); read positions ``(N,)`` in
    ranking-major order (``groups[0][0], groups[0][1], …``), as a flat padded batch has them."""
    segments: list[Segment] = []
    reads: list[list[int]] = []  # read-out offsets within each segment
    for g in groups:
        cut = common_prefix_length(g) if (causal and share_prefix and len(g) > 1) else 0
        if cut:
            toks, pos, br, offs = list(g[0][:cut]), list(range(cut)), [0] * cut, []
            for i, x in enumerate(g):
                suffix = list(x[cut:])
                toks += suffix
                pos += range(cut, cut + len(suffix))
                br += [i + 1] * len(suffix)
                offs.append(len(toks) - 1)
            segments.append((toks, pos, br))
            reads.append(offs)
        else:
            for x in g:
                segments.append((list(x), list(range(len(x))), [0] * len(x)))
                reads.append([len(x) - 1 if causal else 0])
    batch, start = pack_segments(segments, pad_id, causal, hidden_size)
    batch.read_row = torch.tensor([start[s][0] for s, offs in enumerate(reads) for _ in offs])
    batch.read_col = torch.tensor([start[s][1] + o for s, offs in enumerate(reads) for o in offs])
    return batch


def packed_scores(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """``(N,)`` scores of the packed candidates: 1. one forward of the rows (block-diagonal mask,
    per-segment positions), hidden states at the read positions; 2. the model's own head on them
    (causal: ``score``; encoders: pooler / classifier on [CLS])."""
    from rankloop.reward.model import _unwrap, is_causal_scorer

    m = _unwrap(model)
    backbone = getattr(m, m.base_model_prefix)
    causal = is_causal_scorer(m)
    kwargs = {"use_cache": False} if causal else {"token_type_ids": torch.zeros_like(batch.input_ids)}
    read = packed_hidden(backbone, batch, **kwargs)  # 1. (N, H)
    head = m.score(read) if causal else _encoder_head(m, read)  # 2.
    return head.squeeze(-1).float()


def _encoder_head(m: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """The sequence-classification head of a BERT/RoBERTa-style model on (N, H) [CLS] states."""
    if m.config.model_type != "bert":
        return m.classifier(cls[:, None, :])  # RoBERTa-style heads take the sequence and read its first token
    pooler = getattr(getattr(m, m.base_model_prefix), "pooler", None)
    if pooler is not None:  # BERT: pooler (dense + tanh on [CLS]) → dropout → classifier
        cls = pooler(cls[:, None, :])
    return m.classifier(m.dropout(cls))
