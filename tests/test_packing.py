"""Packed batches equal padded ones, sliding-window attention included (rankloop/packing.py)."""

import pytest
import torch

from rankloop.testing import tiny_tokenizer
from rankloop.packing import pack_padded, packed_hidden, supports_packing
from rankloop.sampling import positions

WINDOW = 4


def _config(kind: str, attn: str):
    """Tiny real configs: Mistral (every layer a window of 4), Qwen2 with windows on some layers only."""
    from transformers import MistralConfig, Qwen2Config

    common = dict(vocab_size=len(tiny_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, num_labels=1)
    if kind == "mistral":
        cfg = MistralConfig(sliding_window=WINDOW, **common)
    else:  # layer 0 full attention, layer 1 a window
        cfg = Qwen2Config(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, **common)
    cfg._attn_implementation = attn
    return cfg


def _batch():
    """Left-padded prompts then right-padded responses, rows far longer than the window."""
    rows = [([5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17]), ([20, 21], [22, 23, 24, 25, 26, 27, 28, 29, 30]),
            ([31, 32, 33, 34, 35, 36, 37, 38], [39, 40])]
    P, R = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    ids = torch.zeros((len(rows), P + R), dtype=torch.long)
    am = torch.zeros_like(ids)
    for b, (p, r) in enumerate(rows):
        ids[b, P - len(p):P + len(r)] = torch.tensor(p + r)
        am[b, P - len(p):P + len(r)] = 1
    return ids, am, P


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sliding_window_packed_equals_padded(attn):
    from transformers import AutoModel

    torch.manual_seed(0)
    backbone = AutoModel.from_config(_config("mistral", attn)).eval()
    assert supports_packing(backbone)
    ids, am, P = _batch()
    with torch.no_grad():
        padded = backbone(input_ids=ids, attention_mask=am, position_ids=positions(am)).last_hidden_state[:, P:]
        packed = packed_hidden(backbone, pack_padded(ids, am, P, 32))
    m = am[:, P:].bool()
    assert (packed - padded)[m].abs().max() < 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sliding_window_reward_tree_packing_equals_padded(attn):
    """A ranking's shared prompt packed once: each branch's window still counts its own positions."""
    from transformers import AutoModelForSequenceClassification

    from rankloop.reward.model import pad_batch, sequence_scores
    from rankloop.reward.packing import can_pack, pack_rankings, packed_scores

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_config("mistral", attn)).eval()
    assert can_pack(model)
    prompt = [1, 5, 6, 7, 8, 9]
    groups = [[prompt + [10, 11, 12, 13, 14], prompt + [15, 16], prompt + [17, 18, 19, 20, 21, 22, 23]],
              [[1, 30, 31, 32, 33, 34, 35, 36], [1, 30, 37]]]
    flat = [x for g in groups for x in g]
    with torch.no_grad():
        padded = sequence_scores(model, *pad_batch(flat, 0))
        packed = packed_scores(model, pack_rankings(groups, 0, causal=True, share_prefix=True, hidden_size=32))
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)


def test_mixed_window_layers_are_not_packed():
    """One mask cannot be full attention in one layer and a window in the next: such models stay padded."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from rankloop.reward.packing import can_pack
    from rankloop.rl.rollout import response_hidden

    torch.manual_seed(0)
    cfg = _config("qwen2", "sdpa")
    assert sorted(set(cfg.layer_types)) == ["full_attention", "sliding_attention"]
    backbone = AutoModel.from_config(cfg).eval()
    assert not supports_packing(backbone)
    assert not can_pack(AutoModelForSequenceClassification.from_config(cfg))
    ids, am, P = _batch()
    with torch.no_grad():
        assert torch.equal(response_hidden(backbone, ids, am, P, pack=True), response_hidden(backbone, ids, am, P, pack=False))
