"""Packed reward-model batches: a ranking's candidates forwarded without padding.

A padded batch of N candidates costs ``N × max_len`` token positions in every layer; on the
synthetic benchmark data a fifth of them are padding, and on real data with long prompts the K
copies of the prompt cost more still. A ``PackedBatch`` lays the tokens out end to end in rows
instead and lets attention see only what each token would see in its own padded row:

- **segments** — the unit that attends internally: one candidate (encoders, or causal models
  without prefix sharing), or, for causal models, one ranking laid out as a *tree*: the prompt
  tokens the K candidates share, once, followed by each candidate's own suffix. A suffix token
  attends to the shared prefix and to the earlier tokens of its own suffix only, and its position
  id continues the prefix, so its hidden state is the one it has in the whole sequence
  ``prefix + suffix`` (the same idea as tree attention in speculative decoding);
- **rows** — segments are bin-packed (first fit, longest first) into rows of one length, chosen
  to minimise an estimate of the compute (row positions × (1 + attention's share));
- **attention bias** — a block-diagonal additive mask (0 where attention is allowed, the dtype's
  minimum elsewhere), causal within a segment for decoders and across branches never.

Scores are read where the padded path reads them: causal models at each candidate's last token,
encoders (BERT- and RoBERTa-style) at each candidate's first token ([CLS]) through their own
pooler/classifier. Equal to the padded path to float rounding (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

# Encoder heads that read the first token: model_type → how to apply the head to the (N, H) [CLS] states.
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


@dataclass
class PackedBatch:
    """N candidates in R rows of L token positions.

    ``segment`` (R, L): the segment each position belongs to, −1 for padding at a row's end;
    ``branch`` (R, L): 0 for a segment's shared prefix, i+1 for the tokens of its i-th candidate;
    ``read_row``, ``read_col`` (N,): where candidate n's score is read, in the input's candidate order.
    """

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    segment: torch.Tensor  # (R, L)
    branch: torch.Tensor  # (R, L)
    read_row: torch.Tensor  # (N,)
    read_col: torch.Tensor  # (N,)
    causal: bool

    def to(self, device) -> "PackedBatch":
        t = [x.to(device) for x in (self.input_ids, self.position_ids, self.segment, self.branch, self.read_row, self.read_col)]
        return PackedBatch(*t, causal=self.causal)

    @property
    def tokens(self) -> int:
        """Real (non-padding) token positions forwarded."""
        return int((self.segment >= 0).sum())

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """``(R, 1, L, L)`` additive mask: query q may attend key k iff both are in one segment, k is on
        q's branch or the shared prefix, and (causal) k ≤ q. Padding attends to itself only."""
        seg, br = self.segment, self.branch
        same = seg[:, :, None] == seg[:, None, :]  # (R, Lq, Lk)
        on_branch = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
        allowed = same & on_branch & (seg[:, :, None] >= 0)
        if self.causal:
            allowed &= torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device).tril()
        allowed |= torch.eye(seg.shape[1], dtype=torch.bool, device=seg.device)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens shared by all sequences at their start, leaving each at least one token of its own."""
    n = max(min(len(x) for x in seqs) - 1, 0)
    first = seqs[0]
    for i in range(n):
        if any(x[i] != first[i] for x in seqs):
            return i
    return n


def can_pack(model: nn.Module) -> bool:
    """Packing needs a 4D additive mask honoured as given (sdpa / eager attention) and, for
    encoders, a head read at the first token that we know how to apply."""
    from rankloop.reward.model import _unwrap, is_causal_scorer

    m = _unwrap(model)
    if getattr(m.config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return False
    return is_causal_scorer(m) or m.config.model_type in _ENCODER_TYPES


def ffd_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """First-fit decreasing bin packing of segment ``lengths`` into rows of ``row_len``: segment indices per row."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, f in enumerate(free):
            if lengths[i] <= f:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(row_len - lengths[i])
    return rows


def choose_row_length(lengths: Sequence[int], hidden_size: int, max_factor: int = 4) -> int:
    """The row length L (from the longest segment up to ``max_factor`` times it) that minimises
    ``rows · L · (1 + L / (6·H))``: per token, the linear layers cost ~24·H² FLOPs and attention
    over L keys ~4·L·H, so attention adds L/(6H) of the linear cost."""
    longest = max(lengths)
    best, best_cost = longest, float("inf")
    for row_len in range(longest, max_factor * longest + 1, max(1, longest // 16)):
        cost = len(ffd_rows(lengths, row_len)) * row_len * (1 + row_len / (6 * hidden_size))
        if cost < best_cost:
            best, best_cost = row_len, cost
    return best


def pack_rankings(groups: Sequence[Sequence[Sequence[int]]], pad_id: int, causal: bool, share_prefix: bool,
                  hidden_size: int) -> PackedBatch:
    """Pack the candidates of B rankings (``groups[b][k]`` = token ids) into a ``PackedBatch``.

    Causal models with ``share_prefix`` get one tree segment per ranking (prefix once, then the K
    suffixes); otherwise every candidate is its own segment. The read-out order is ranking-major
    (``groups[0][0], groups[0][1], …``), as a flat padded batch would be.
    """
    # 1. Segments: (tokens, positions, branches, read-out offsets) each.
    segments: list[tuple[list[int], list[int], list[int], list[int]]] = []
    for g in groups:
        cut = common_prefix_length(g) if (causal and share_prefix and len(g) > 1) else 0
        if cut:
            toks, pos, br, reads = list(g[0][:cut]), list(range(cut)), [0] * cut, []
            for i, x in enumerate(g):
                suffix = x[cut:]
                toks += suffix
                pos += range(cut, cut + len(suffix))
                br += [i + 1] * len(suffix)
                reads.append(len(toks) - 1)
            segments.append((toks, pos, br, reads))
        else:
            for x in g:
                segments.append((list(x), list(range(len(x))), [0] * len(x), [len(x) - 1 if causal else 0]))
    # 2. Rows: bin-pack the segments.
    lengths = [len(s[0]) for s in segments]
    row_len = choose_row_length(lengths, hidden_size)
    rows = ffd_rows(lengths, row_len)
    n_rows = len(rows)
    input_ids = torch.full((n_rows, row_len), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, row_len), dtype=torch.long)
    segment = torch.full((n_rows, row_len), -1, dtype=torch.long)
    branch = torch.zeros((n_rows, row_len), dtype=torch.long)
    where: dict[int, tuple[int, int]] = {}
    for r, members in enumerate(rows):
        col = 0
        for s in members:
            toks, pos, br, _ = segments[s]
            n = len(toks)
            input_ids[r, col : col + n] = torch.tensor(toks)
            position_ids[r, col : col + n] = torch.tensor(pos)
            segment[r, col : col + n] = s
            branch[r, col : col + n] = torch.tensor(br)
            where[s] = (r, col)
            col += n
    # 3. Read-out positions, in segment order = ranking-major candidate order.
    read_row, read_col = [], []
    for s, (_, _, _, reads) in enumerate(segments):
        r, c = where[s]
        read_row += [r] * len(reads)
        read_col += [c + o for o in reads]
    return PackedBatch(input_ids, position_ids, segment, branch, torch.tensor(read_row), torch.tensor(read_col), causal)


def packed_scores(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """``(N,)`` scores of the packed candidates; equal to ``sequence_scores`` on padded whole sequences
    up to float rounding.

    1. one forward of the rows with the block-diagonal bias and per-segment position ids;
    2. the hidden state at each candidate's read-out position;
    3. the model's own head on it (causal: ``score``; encoders: pooler/classifier on [CLS]).
    """
    from rankloop.reward.model import _unwrap, is_causal_scorer

    m = _unwrap(model)
    backbone = getattr(m, m.base_model_prefix)
    dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
    kwargs = {"use_cache": False} if is_causal_scorer(m) else {"token_type_ids": torch.zeros_like(batch.input_ids)}
    hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_bias(dtype),
                      position_ids=batch.position_ids, **kwargs).last_hidden_state  # 1. (R, L, H)
    read = hidden[batch.read_row, batch.read_col]  # 2. (N, H)
    if is_causal_scorer(m):  # 3.
        return m.score(read).squeeze(-1).float()
    return _encoder_head(m, read).squeeze(-1).float()


def _encoder_head(m: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """The sequence-classification head of a BERT/RoBERTa-style model applied to (N, H) [CLS] states."""
    pooler = getattr(getattr(m, m.base_model_prefix), "pooler", None)
    if m.config.model_type in ("roberta", "xlm-roberta", "camembert", "electra"):
        return m.classifier(cls[:, None, :])  # these heads take the sequence and read its first token
    if pooler is not None:  # BERT: pooler (dense + tanh on [CLS]) → dropout → classifier
        cls = pooler(cls[:, None, :])
    return m.classifier(m.dropout(cls))
