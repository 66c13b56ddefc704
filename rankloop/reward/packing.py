"""Reward-model batches without padding: a ranking's candidates packed into rows.

On the synthetic benchmark data a fifth of a padded batch's positions are padding, and on real
data with long prompts the K copies of the prompt cost more still. ``pack_rankings`` builds a
``rankloop.packing.PackedBatch`` of the candidates of B rankings:

- causal backbones with ``share_prefix``: one *tree* segment per ranking — the tokens the K
  candidates share (the prompt) once, then each candidate's suffix as its own branch;
- otherwise (encoders, or no sharing): one segment per candidate.

Scores are read where the padded path reads them: causal models at each candidate's last token,
BERT encoders at each candidate's first token ([CLS]) through their own pooler / classifier —
and since only those positions' final states are read, the last layer computes its queries,
attention output and feed-forward at them alone. Equal to ``sequence_scores`` on padded whole
sequences to float rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rankloop.models import is_causal_scorer, unwrap_model
from rankloop.packing import PackedBatch, common_prefix_length, pack_groups, packed_hidden, supports_packing  # noqa: F401

# Encoders packed: BERT's head reads [CLS] through its pooler, and its position ids start at 0 in every
# sequence (RoBERTa-style models number positions from padding_idx + 1 and stay padded).
_ENCODER_TYPES = {"bert"}


def can_pack(model: nn.Module) -> bool:
    """The attention takes a 4D mask and, for encoders, we know how to apply the head to [CLS] states."""

    m = unwrap_model(model)
    return supports_packing(m) and (is_causal_scorer(m) or m.config.model_type in _ENCODER_TYPES)


def pack_rankings(groups: Sequence[Sequence[Sequence[int]]], pad_id: int, causal: bool, share_prefix: bool,
                  hidden_size: int, reads: Sequence[Sequence[Sequence[int]]] | None = None) -> PackedBatch:
    """Pack the candidates of B rankings (``groups[b][k]`` = token ids); read positions ``(N,)`` in
    ranking-major order (``groups[0][0], groups[0][1], …``), as a flat padded batch has them — or
    the positions ``reads`` asks for (see ``rankloop.packing.pack_groups``)."""
    return pack_groups(groups, pad_id, causal, share_prefix, hidden_size, reads)


def packed_scores(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """``(N,)`` scores of the packed candidates: 1. the final hidden states at the read positions
    (causal: one forward of the rows; BERT: ``_bert_read_states``); 2. the model's own head on them
    (causal: ``score``; BERT: pooler → dropout → classifier)."""

    m = unwrap_model(model)
    backbone = getattr(m, m.base_model_prefix)
    if is_causal_scorer(m):
        return m.score(packed_hidden(backbone, batch, use_cache=False)).squeeze(-1).float()
    cls = _bert_read_states(backbone, batch)  # (N, H)
    if backbone.pooler is not None:
        cls = backbone.pooler(cls[:, None, :])
    return m.classifier(m.dropout(cls)).squeeze(-1).float()


def _bert_read_states(bert: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """``(N, H)`` final states of a BERT encoder at the read positions, its last layer computed there only.

    Every layer but the last runs on all positions as usual. The last layer's output is read at N
    positions, so only their queries, attention outputs and feed-forward are computed; keys and
    values still come from every position of the row. That is 10/12 of the last layer's linear
    work skipped at the other positions (~14 % of a 6-layer MiniLM), with the same result.
    """
    dtype = bert.embeddings.word_embeddings.weight.dtype
    bias = batch.attention_bias(dtype)  # (R, 1, L, L)
    h = bert.embeddings(input_ids=batch.input_ids, token_type_ids=torch.zeros_like(batch.input_ids),
                        position_ids=batch.position_ids)  # (R, L, H)
    *body, last = bert.encoder.layer
    for layer in body:
        out = layer(h, bias)
        h = out[0] if isinstance(out, tuple) else out
    att = last.attention.self
    rows, cols = batch.read_row, batch.read_col
    heads, size = att.num_attention_heads, att.attention_head_size
    split = lambda x: x.view(x.shape[0], -1, heads, size).transpose(1, 2)  # (…, T, H) → (…, heads, T, size)
    x = h[rows, cols]  # (N, H) the read positions' inputs (also the residual)
    q = split(att.query(x[:, None, :]))  # (N, heads, 1, size)
    k, v = split(att.key(h))[rows], split(att.value(h))[rows]  # (N, heads, L, size)
    a = nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=bias[rows, :, cols][:, :, None, :], scale=att.scaling,
        dropout_p=att.dropout.p if att.training else 0.0)  # (N, heads, 1, size)
    a = last.attention.output(a.reshape(x.shape), x)
    return last.output(last.intermediate(a), a)
