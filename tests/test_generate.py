"""The generator contract (rankloop/generate.py), run on every implementation that ships — today the
built-in KV-cache sampler: shapes and layout, log-probs equal to a teacher-forced pass at the
sampling temperature, stop tokens ending a response and masking the rest, seeds."""

import pytest
import torch

from rankloop.generate import Generator, KVCacheGenerator, SamplingParams
from rankloop.models import load_causal_lm, load_tokenizer
from rankloop.ops import logprobs_from_logits
from rankloop.sampling import positions

PROMPTS = ["the cat sat", "once upon a time there was a little bird", "good"]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def gen(request) -> tuple[Generator, object, object]:
    path = request.getfixturevalue(f"tiny_{request.param}")
    tok = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path, tokenizer=tok)
    # batch_size 2 < rows: the contract must hold across separately padded chunks too.
    return KVCacheGenerator(model, tok, batch_size=2), model, tok


def _teacher_forced_logprobs(model, batch, temperature: float) -> torch.Tensor:
    """(N, R) log softmax(logits / T)[token] of one full forward pass over prompt + response."""
    ids, mask = batch.input_ids, batch.attention_mask
    P = batch.prompt_ids.size(1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits.float()
    pred = logits[:, P - 1:-1, :] / temperature  # position t predicts token t + 1
    return logprobs_from_logits(pred, batch.response_ids) * batch.response_mask


def test_the_builtin_is_a_generator(gen):
    assert isinstance(gen[0], Generator)


def test_shapes_and_layout(gen):
    g, _, tok = gen
    b = g.generate(PROMPTS, SamplingParams(k=3, max_new_tokens=9, seed=1, stop_token_ids=()))
    N, R = len(PROMPTS) * 3, 9  # no stop token: every row runs to max_new_tokens
    assert b.prompt_ids.shape == b.prompt_mask.shape and b.prompt_ids.size(0) == N
    assert b.response_ids.shape == b.response_mask.shape == (N, R)
    assert b.finished.shape == (N,) and not b.finished.any()
    assert b.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(b.texts) == N
    assert b.logprobs is None  # only when asked for
    for row, pi in enumerate(b.prompt_index):  # left padding: the prompt's tokens end at column P
        want = tok(PROMPTS[pi])["input_ids"]
        n = int(b.prompt_mask[row].sum())
        assert b.prompt_ids[row, -n:].tolist() == want and not b.prompt_mask[row, :-n].any()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_logprobs_equal_a_teacher_forced_pass_at_the_temperature(gen, temperature):
    g, model, _ = gen
    # top-k/p and min_new_tokens change what is drawn, not the policy's log-probs of what was drawn.
    b = g.generate(PROMPTS, SamplingParams(k=2, max_new_tokens=8, temperature=temperature, top_k=20, top_p=0.9,
                                           min_new_tokens=2, seed=3, logprobs=True))
    assert b.logprobs.shape == b.response_ids.shape
    assert (b.logprobs[b.response_mask == 0] == 0).all()
    assert (b.logprobs[b.response_mask == 1] < 0).all()
    torch.testing.assert_close(b.logprobs, _teacher_forced_logprobs(model, b, temperature), atol=2e-5, rtol=0)


def test_a_stop_token_ends_the_response_and_masks_the_rest(gen):
    g, _, tok = gen
    free = g.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=()))
    # Stop on the token greedy decoding emits third in row 0: row 0 must stop there, whatever follows.
    stop = int(free.response_ids[0, 2])
    b = g.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=(stop,)))
    first = [row.index(stop) if stop in row else None for row in free.response_ids.tolist()]
    assert first[0] is not None and first[0] <= 2
    for i, at in enumerate(first):
        if at is None:  # never emitted: the row runs to the limit, unfinished
            assert not b.finished[i] and b.response_mask[i].sum() == 10
            assert b.response_ids[i].tolist() == free.response_ids[i].tolist()
            continue
        assert b.finished[i]
        assert b.response_ids[i, :at + 1].tolist() == free.response_ids[i, :at + 1].tolist()  # stop token kept
        assert b.response_mask[i].tolist() == [1] * (at + 1) + [0] * (b.response_ids.size(1) - at - 1)
        assert (b.response_ids[i, at + 1:] == tok.pad_token_id).all()
    # min_new_tokens: the stop token cannot end a response before it.
    m = g.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=(stop,),
                                           min_new_tokens=4))
    assert (m.response_mask.sum(1) >= 4).all()


def test_same_seed_same_tokens_different_seeds_differ(gen):
    g, _, _ = gen
    p = SamplingParams(k=2, max_new_tokens=10, temperature=1.2, stop_token_ids=())
    a = g.generate(PROMPTS, SamplingParams(**{**p.__dict__, "seed": 5}))
    b = g.generate(PROMPTS, SamplingParams(**{**p.__dict__, "seed": 5}))
    c = g.generate(PROMPTS, SamplingParams(**{**p.__dict__, "seed": 6}))
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)
    rows = len(PROMPTS) * 2
    r1 = g.generate(PROMPTS, SamplingParams(**{**p.__dict__, "row_seeds": tuple(range(rows))}))
    r2 = g.generate(PROMPTS, SamplingParams(**{**p.__dict__, "row_seeds": tuple(range(rows))}))
    r3 = g.generate(PROMPTS, SamplingParams(**{**p.__dict__, "row_seeds": tuple(range(100, 100 + rows))}))
    assert torch.equal(r1.response_ids, r2.response_ids) and not torch.equal(r1.response_ids, r3.response_ids)
    # A row's stream is its own: the last prompt alone, with its rows' seeds, samples what it did in the batch.
    alone = g.generate(PROMPTS[2:], SamplingParams(**{**p.__dict__, "row_seeds": tuple(range(rows))[4:]}))
    assert torch.equal(alone.response_ids, r1.response_ids[4:])


def test_bad_params_are_refused_naming_them(gen):
    g, model, tok = gen
    with pytest.raises(ValueError, match="row_seeds has 1 seeds for 3 rows"):
        g.generate(PROMPTS, SamplingParams(row_seeds=(1,)))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        g.generate(PROMPTS, SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        KVCacheGenerator(model, tok, batch_size=0)
