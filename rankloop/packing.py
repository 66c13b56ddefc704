"""Packed batches: sequences laid end to end in rows, attention kept inside each by a mask.

A padded batch of N sequences costs ``N × longest`` token positions in every layer. A
``PackedBatch`` lays the real tokens out end to end in rows instead and gives attention a
block-diagonal additive mask, so each token sees exactly what it would see in its own padded row:

- **segments** — the unit that attends internally: one sequence, or (reward models, causal
  backbones) one ranking laid out as a *tree*: the prompt tokens its K candidates share, once,
  followed by each candidate's own suffix. A suffix token attends to the shared prefix and to the
  earlier tokens of its own branch only, and its position id continues the prefix, so its hidden
  state is the one it has in the whole sequence ``prefix + suffix`` (the layout of tree attention
  in speculative decoding);
- **rows** — segments are bin-packed (first fit, longest first) into rows of one length, chosen to
  minimise an estimate of the compute, ``rows · L · (1 + L / 6H)``;
- **read positions** — where the caller reads outputs, in the caller's own layout.

A batch is packed only when that removes at least 10 % of the padded positions (``worth_packing``).

Sliding-window attention (Mistral, Qwen2 with ``use_sliding_window``, …): a model given its own 4D
mask applies no window of its own, so the packed mask carries it — a query sees the keys fewer than
W positions back, counted in position ids, which is the window of the padded path. Models whose
layers differ (full attention in some, a window in others) are not packed: one mask cannot be both
(``supports_packing``).

Used by the reward-model trainer (``rankloop.reward.packing``), DPO (``rankloop.dpo.train``: the
response tokens' log-probs, read off a ranking's tree) and PPO's teacher-forced passes
(``rankloop.rl.rollout``). Equal to the padded forward to float rounding (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

Segment = tuple[list[int], list[int], list[int]]  # token ids, position ids, branch ids (0 = shared)


@dataclass
class PackedBatch:
    """Segments in R rows of L positions.

    ``segment`` (R, L): the segment each position belongs to, −1 for padding at a row's end;
    ``branch`` (R, L): 0 for a segment's shared part, i ≥ 1 for its i-th branch;
    ``read_row``, ``read_col``: the packed position of each output the caller reads (any shape).
    """

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    segment: torch.Tensor  # (R, L)
    branch: torch.Tensor  # (R, L)
    read_row: torch.Tensor
    read_col: torch.Tensor
    causal: bool

    def to(self, device) -> "PackedBatch":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("input_ids", "position_ids", "segment", "branch", "read_row", "read_col")})

    @property
    def tokens(self) -> int:
        """Real (non-padding) token positions forwarded."""
        return int((self.segment >= 0).sum())

    def attention_bias(self, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        """``(R, 1, L, L)`` additive mask: query q may attend key k iff both are in one segment, k is on
        q's branch or the shared part, (causal) k ≤ q, and — with a sliding ``window`` W — k is fewer
        than W positions before q (transformers' ``kv_idx > q_idx − W``). Padding attends to itself only."""
        seg, br = self.segment, self.branch
        n = seg.shape[1]
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (R, Lq, Lk)
        allowed &= (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
        if self.causal:
            allowed &= torch.ones(n, n, dtype=torch.bool, device=seg.device).tril()
        if window is not None:
            if not self.causal:  # bidirectional windows count |q − k| ≤ W: a convention of their own
                raise ValueError("sliding-window attention is packed for causal models only")
            # Position ids, not columns: a tree branch's positions continue its prompt's.
            pos = self.position_ids
            allowed &= (pos[:, :, None] - pos[:, None, :]) < window
        allowed |= torch.eye(n, dtype=torch.bool, device=seg.device)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


MIN_SAVING = 0.10  # pack only when it removes at least this share of the padded positions


def worth_packing(positions: int, padded_positions: int, min_saving: float = MIN_SAVING) -> bool:
    """Packing pays when it cuts enough positions: the 4D mask and longer attention rows cost a little,
    which on a tiny model (stories260K: 1.3 s vs 0.9 s per PPO update at 7 % saved) outweighs a small saving.
    A packed batch has at least as many positions as real tokens, so a caller can ask with the real-token
    count first and skip building a batch that could not pay."""
    return positions <= (1 - min_saving) * padded_positions


def _layer_windows(config) -> set:
    """The attention window of each layer kind the model has: None (full attention), an int W (a
    sliding window) or the name of an attention we do not pack (chunked, linear, …)."""
    window = getattr(config, "sliding_window", None) or None
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2-style switch, in older releases too
        window = None
    types = getattr(config, "layer_types", None)
    if not types:
        return {window}
    return {None if t == "full_attention" else window if t == "sliding_attention" else t for t in types}


def _one_window(config) -> tuple[bool, int | None]:
    """(every layer attends alike — fully or through one window W —, that window or None)."""
    windows = _layer_windows(config)
    window = next(iter(windows))
    return len(windows) == 1 and (window is None or isinstance(window, int)), window


def attention_window(model: nn.Module) -> int | None:
    """The sliding window W every attention layer of ``model`` uses, or None for full attention (for a
    model that ``supports_packing``)."""
    alike, window = _one_window(model.config)
    if not alike:
        raise ValueError(f"{model.config.model_type}: layers with different attention "
                         f"({sorted(map(str, _layer_windows(model.config)))}) cannot share one packed mask")
    return window


def supports_packing(model: nn.Module) -> bool:
    """A 4D additive mask is honoured as given by the sdpa and eager attention implementations
    (flash-attention kernels take no such mask), and every layer attends alike — fully, or through one
    sliding window the packed mask then applies."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager") and _one_window(model.config)[0]


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
    """The row length L, from the longest segment up to ``max_factor`` times it, that minimises
    ``rows · L · (1 + L / (6·H))``: per token the linear layers cost ~24·H² FLOPs and attention over
    L keys ~4·L·H, so attention adds L/(6H) of the linear cost."""
    longest = max(lengths)
    best, best_cost = longest, float("inf")
    for row_len in range(longest, max_factor * longest + 1, max(1, longest // 16)):
        cost = len(ffd_rows(lengths, row_len)) * row_len * (1 + row_len / (6 * hidden_size))
        if cost < best_cost:
            best, best_cost = row_len, cost
    return best


def pack_segments(segments: Sequence[Segment], pad_id: int, causal: bool,
                  hidden_size: int) -> tuple[PackedBatch, list[tuple[int, int]]]:
    """Bin-pack ``segments`` into rows; returns the batch (no read positions yet) and each segment's
    ``(row, column)`` of its first token."""
    lengths = [len(s[0]) for s in segments]
    row_len = choose_row_length(lengths, hidden_size)
    rows = ffd_rows(lengths, row_len)
    shape = (len(rows), row_len)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment = torch.full(shape, -1, dtype=torch.long)
    branch = torch.zeros(shape, dtype=torch.long)
    start: list[tuple[int, int]] = [(0, 0)] * len(segments)
    for r, members in enumerate(rows):
        col = 0
        for s in members:
            toks, pos, br = segments[s]
            n = len(toks)
            input_ids[r, col:col + n] = torch.tensor(toks)
            position_ids[r, col:col + n] = torch.tensor(pos)
            segment[r, col:col + n] = s
            branch[r, col:col + n] = torch.tensor(br)
            start[s] = (r, col)
            col += n
    empty = torch.zeros(0, dtype=torch.long)
    return PackedBatch(input_ids, position_ids, segment, branch, empty, empty, causal), start


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens shared by all sequences at their start, leaving each at least one token of its own."""
    n = max(min(len(x) for x in seqs) - 1, 0)
    first = seqs[0]
    for i in range(n):
        if any(x[i] != first[i] for x in seqs):
            return i
    return n


def pack_groups(groups: Sequence[Sequence[Sequence[int]]], pad_id: int, causal: bool, share_prefix: bool,
                hidden_size: int, reads: Sequence[Sequence[Sequence[int]]] | None = None) -> PackedBatch:
    """Pack B groups of sequences (``groups[b][k]`` = token ids; a reward model's or DPO's ranking):
    causal with ``share_prefix``, one tree segment per group — the tokens its sequences share,
    once, then each sequence's suffix as a branch; otherwise one segment per sequence.

    ``reads[b][k]`` lists the positions of sequence k of group b to read (within that sequence);
    by default its last token (causal) or its first (encoders). Read positions ``(M,)`` come in
    group, sequence, position order; a position in the shared part reads the shared token, whose
    state is the same for every branch."""
    segments: list[Segment] = []
    offsets: list[list[int]] = []  # read-out offsets within each segment
    for b, g in enumerate(groups):
        want = reads[b] if reads is not None else [[len(x) - 1 if causal else 0] for x in g]
        cut = common_prefix_length(g) if (causal and share_prefix and len(g) > 1) else 0
        if cut:
            toks, pos, br, offs = list(g[0][:cut]), list(range(cut)), [0] * cut, []
            for i, x in enumerate(g):
                base = len(toks) - cut  # position t >= cut of x sits at base + t in the segment
                suffix = list(x[cut:])
                toks += suffix
                pos += range(cut, cut + len(suffix))
                br += [i + 1] * len(suffix)
                offs += [t if t < cut else base + t for t in want[i]]
            segments.append((toks, pos, br))
            offsets.append(offs)
        else:
            for i, x in enumerate(g):
                segments.append((list(x), list(range(len(x))), [0] * len(x)))
                offsets.append(list(want[i]))
    batch, start = pack_segments(segments, pad_id, causal, hidden_size)
    batch.read_row = torch.tensor([start[s][0] for s, offs in enumerate(offsets) for _ in offs], dtype=torch.long)
    batch.read_col = torch.tensor([start[s][1] + o for s, offs in enumerate(offsets) for o in offs], dtype=torch.long)
    return batch


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor, first_col: int, hidden_size: int,
                pad_id: int = 0) -> PackedBatch:
    """A padded causal batch (B, T) — each row's real tokens contiguous, as with a left-padded prompt
    followed by a right-padded response — as one segment per row; read positions ``(B, T − first_col)``
    for the columns from ``first_col`` on. A padding column reads its row's last real token (any
    finite state: the caller masks it)."""
    ids, mask = input_ids.cpu(), attention_mask.cpu().bool()
    lengths = mask.sum(1).tolist()
    begin = mask.long().argmax(1).tolist()  # first real column of each row
    segments = [(ids[b, begin[b]:begin[b] + n].tolist(), list(range(n)), [0] * n) for b, n in enumerate(lengths)]
    batch, start = pack_segments(segments, pad_id, causal=True, hidden_size=hidden_size)
    cols = torch.arange(first_col, ids.shape[1])  # (T')
    offset = (cols[None, :] - torch.tensor(begin)[:, None]).clamp(min=0)  # (B, T') offset in the row's segment
    offset = torch.minimum(offset, torch.tensor(lengths)[:, None] - 1)
    rows = torch.tensor([r for r, _ in start])[:, None].expand_as(offset)
    read_col = torch.tensor([c for _, c in start])[:, None] + offset
    return replace(batch, read_row=rows.contiguous(), read_col=read_col)


def packed_hidden(backbone: nn.Module, batch: PackedBatch, **kwargs) -> torch.Tensor:
    """The backbone's last hidden states at ``batch``'s read positions: ``(*read.shape, H)``."""
    dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
    bias = batch.attention_bias(dtype, attention_window(backbone))
    hidden = backbone(input_ids=batch.input_ids, attention_mask=bias,
                      position_ids=batch.position_ids, **kwargs).last_hidden_state  # (R, L, H)
    return hidden[batch.read_row, batch.read_col]
