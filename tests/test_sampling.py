"""Sampling: batched KV-cache decoding equals one-at-a-time and transformers' generate; seeds; stops."""

import json

import pytest
import torch

from rankloop.models import load_causal_lm, load_tokenizer
from rankloop.sampling import (PromptTooLongError, default_stop_ids, filter_logits, generate, response_mask_from,
                               sample_candidates)

PROMPTS = ["the cat sat", "once upon a time there was a little bird", "good"]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    tok = load_tokenizer(tiny_gpt2, padding_side="left")
    return load_causal_lm(tiny_gpt2, tokenizer=tok), tok


@pytest.fixture(scope="module")
def llama(tiny_llama):
    tok = load_tokenizer(tiny_llama, padding_side="left")
    return load_causal_lm(tiny_llama, tokenizer=tok), tok


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_batched_greedy_equals_single_and_generate(which, request):
    model, tok = request.getfixturevalue(which)
    batch = generate(model, tok, PROMPTS, max_new_tokens=12, temperature=0, stop_token_ids=[])
    for i, p in enumerate(PROMPTS):
        one = generate(model, tok, [p], max_new_tokens=12, temperature=0, stop_token_ids=[])
        assert batch.response_ids[i].tolist() == one.response_ids[0].tolist()
        enc = tok(p, return_tensors="pt")
        ref = model.generate(**enc, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                             pad_token_id=tok.pad_token_id)[0, enc.input_ids.size(1):]
        assert batch.response_ids[i].tolist() == ref.tolist()
    assert batch.response_mask.sum().item() == 3 * 12
    assert batch.input_ids.shape == (3, batch.prompt_ids.size(1) + 12)


def test_seeded_sampling_is_reproducible(gpt2):
    model, tok = gpt2
    a = generate(model, tok, PROMPTS, k=2, max_new_tokens=10, seed=7, temperature=1.3)
    b = generate(model, tok, PROMPTS, k=2, max_new_tokens=10, seed=7, temperature=1.3)
    c = generate(model, tok, PROMPTS, k=2, max_new_tokens=10, seed=8, temperature=1.3)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.prompt_index == [0, 0, 1, 1, 2, 2]


def test_row_seeds_make_a_row_independent_of_its_batch(gpt2):
    model, tok = gpt2
    full = generate(model, tok, PROMPTS, max_new_tokens=10, row_seeds=[11, 22, 33], batch_size=3)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, tok, [p], max_new_tokens=10, row_seeds=[[11, 22, 33][i]])
        n = int(full.response_mask[i].sum())
        assert full.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist()
    chunked = generate(model, tok, PROMPTS, max_new_tokens=10, row_seeds=[11, 22, 33], batch_size=1)
    assert chunked.texts == full.texts


def test_row_seeded_sampling_follows_the_distribution():
    # The exponential race must sample from softmax(logits): check frequencies on a fixed distribution.
    from rankloop.sampling import _generate_chunk  # noqa: F401  (the loop uses the same formula)

    probs = torch.tensor([0.5, 0.3, 0.2])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([(probs / torch.empty(3).exponential_(generator=g)).argmax() for _ in range(20000)])
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)


def test_filter_logits_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_p=0.8)  # 0.5 + 0.3 reaches 0.8: the third token is dropped
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p_small = filter_logits(logits, top_p=0.1)  # the top token always survives
    assert torch.isfinite(p_small[0, 0]) and torch.isinf(p_small[0, 1:]).all()
    t = filter_logits(logits, temperature=0.5)
    assert torch.allclose(t, logits * 2)


def test_top_k_one_equals_greedy(gpt2):
    model, tok = gpt2
    g = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0)
    s = generate(model, tok, PROMPTS, max_new_tokens=8, top_k=1, seed=3)
    assert torch.equal(g.response_ids, s.response_ids)


def test_response_mask_stops_after_first_stop_token():
    resp = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [1, 9, 9, 9]])
    m = response_mask_from(resp, torch.tensor([2, 1]))
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_stop_tokens_and_finished_flag(gpt2):
    model, tok = gpt2
    free = generate(model, tok, PROMPTS, max_new_tokens=6, temperature=0, stop_token_ids=[])
    stop = free.response_ids[0, 2].item()  # force row 0 to stop at its third token
    b = generate(model, tok, PROMPTS, max_new_tokens=6, temperature=0, stop_token_ids=[stop, 99999 % len(tok)])
    first = (free.response_ids[0] == stop).nonzero()[0].item()
    assert b.finished[0] and b.response_mask[0].sum() == first + 1
    assert (b.response_ids[0, first + 1:] == tok.pad_token_id).all()
    assert b.texts[0] == tok.decode(free.response_ids[0, :first].tolist(), skip_special_tokens=True)


def test_min_new_tokens_suppresses_stops(gpt2):
    model, tok = gpt2
    free = generate(model, tok, PROMPTS[:1], max_new_tokens=6, temperature=0, stop_token_ids=[])
    stop = free.response_ids[0, 0].item()
    b = generate(model, tok, PROMPTS[:1], max_new_tokens=6, temperature=0, stop_token_ids=[stop], min_new_tokens=3)
    assert b.response_mask[0].sum() >= 3


def test_prompt_too_long(gpt2):
    model, tok = gpt2
    with pytest.raises(PromptTooLongError, match="max_prompt_tokens=3"):
        generate(model, tok, PROMPTS, max_new_tokens=2, max_prompt_tokens=3)
    b = generate(model, tok, PROMPTS, max_new_tokens=2, max_prompt_tokens=3, truncate_prompts=True)
    assert b.prompt_ids.size(1) == 3


def test_stories260k_stops_on_bos(stories_path):
    tok = load_tokenizer(stories_path, padding_side="left")
    model = load_causal_lm(stories_path, tokenizer=tok)
    assert default_stop_ids(model, tok) == [2, 1]
    b = generate(model, tok, ["The little bird was sad because"], max_new_tokens=200, temperature=0)
    # The model card: greedy generation stops on BOS after 185 new tokens.
    assert b.finished[0] and int(b.response_mask[0].sum()) == 185 and b.response_ids[0, 184].item() == 1
    assert b.texts[0].startswith(" he loved to sing.")


def test_sample_cli_writes_k_candidates(tiny_gpt2, tmp_path):
    from typer.testing import CliRunner

    from rankloop.cli import app

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PROMPTS)))
    out = tmp_path / "candidates.jsonl"
    res = CliRunner().invoke(app, ["sample", "--model", str(tiny_gpt2), "--prompts", str(prompts), "--k", "3",
                                   "--output", str(out), "--max-new-tokens", "8", "--round", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 9
    assert {r["prompt_id"] for r in rows} == {"p0", "p1", "p2"}
    assert rows[0]["id"] == "p0-r2-0" and rows[0]["round"] == 2
    from rankloop.records import Prompt

    again = sample_candidates(tiny_gpt2, [Prompt(id=f"p{i}", text=t) for i, t in enumerate(PROMPTS)], 3,
                              max_new_tokens=8, round=2)
    assert [c.text for c in again] == [r["text"] for r in rows]
    # --device: explicit cpu gives the same candidates; a device this machine lacks is a clear error
    out2 = tmp_path / "cpu.jsonl"
    res = CliRunner().invoke(app, ["sample", "--model", str(tiny_gpt2), "--prompts", str(prompts), "--k", "3",
                                   "--output", str(out2), "--max-new-tokens", "8", "--round", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert out2.read_text() == out.read_text()
    if not torch.cuda.is_available():
        res = CliRunner().invoke(app, ["sample", "--model", str(tiny_gpt2), "--prompts", str(prompts),
                                       "--output", str(tmp_path / "x.jsonl"), "--device", "cuda"])
        assert res.exit_code == 2 and "not usable here" in res.output
        assert not (tmp_path / "x.jsonl").exists()


def _teacher_forced_logprobs(model, batch, temperature: float) -> torch.Tensor:
    """(N, R) log softmax(logits / T)[token] of the sampled responses, from one forward pass."""
    from rankloop.sampling import positions

    ids, am = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=am, position_ids=positions(am)).logits.float()
    P = batch.prompt_ids.size(1)
    logits = logits[:, P - 1:-1] / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    return lp * batch.response_mask


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_policy_logprobs_ignore_min_new_tokens_mask(gpt2, temperature):
    """The sampler's log π is the policy's own, as a forward pass computes it: the stop tokens that
    min_new_tokens forbids are removed from what is sampled, never from π (at T = 1 the masked logits
    once aliased the ones the log-probs were taken from)."""
    model, tok = gpt2
    greedy = generate(model, tok, PROMPTS, max_new_tokens=1, temperature=0, stop_token_ids=[])
    stop = sorted(set(greedy.response_ids[:, 0].tolist()))  # the likeliest first tokens: masking them matters
    b = generate(model, tok, PROMPTS, max_new_tokens=6, min_new_tokens=4, temperature=temperature,
                 stop_token_ids=stop, seed=0, policy_stats=True)
    assert (b.response_lengths >= 4).all()
    assert torch.allclose(b.logprobs, _teacher_forced_logprobs(model, b, temperature), atol=1e-5)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
@pytest.mark.parametrize("policy_stats", [False, True])
def test_decoding_uses_the_current_cache_argument(which, policy_stats, request):
    """No deprecated ``past_key_values`` (removed in transformers 5.40) on either decode path."""
    import warnings

    model, tok = request.getfixturevalue(which)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(model, tok, PROMPTS, max_new_tokens=4, seed=0, policy_stats=policy_stats)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_cache_argument_falls_back_for_models_before_the_rename(gpt2):
    from rankloop.sampling import cache_argument

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None):
            return input_ids

    assert cache_argument(Old()) == "past_key_values"
    assert cache_argument(gpt2[0]) == "cache"
