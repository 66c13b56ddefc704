"""The score is read at the last real token, whatever the padding; encoders read their [CLS]."""

import pytest
import torch

from rankloop.models import load_sequence_scorer, load_tokenizer
from rankloop.testing import build_tiny
from rankloop.ops import last_token_index
from rankloop.reward.model import Normalisation, RewardScorer, encode_texts, pad_batch, sequence_scores

TEXTS = ["the cat sat on the mat.", "good", "once upon a time there was a little bird who sang every day."]


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2", "bert"])
def scorer_dir(request, tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp(request.param), request.param, "reward", seed=1)


def _left_pad(seqs, pad_id):
    t = max(map(len, seqs))
    ids = torch.full((len(seqs), t), pad_id)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(s)
        att[i, t - len(s):] = 1
    return ids, att


def test_padding_does_not_change_scores(scorer_dir):
    tok = load_tokenizer(scorer_dir)
    model = load_sequence_scorer(scorer_dir, tokenizer=tok).eval()
    seqs = encode_texts(tok, TEXTS, 64)
    with torch.no_grad():
        alone = torch.cat([sequence_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
        right = sequence_scores(model, *pad_batch(seqs, tok.pad_token_id))
        assert right.shape == (3,)
        assert torch.allclose(alone, right, atol=1e-5)
        if model.config.model_type != "bert":  # absolute-position encoders are not left-pad invariant
            left = sequence_scores(model, *_left_pad(seqs, tok.pad_token_id))
            if model.config.model_type != "gpt2":  # GPT-2 positions count the left padding too
                assert torch.allclose(alone, left, atol=1e-5)


def test_last_real_token_even_when_pad_equals_eos(tmp_path):
    path = build_tiny(tmp_path / "m", "llama", "reward")
    tok = load_tokenizer(path)
    model = load_sequence_scorer(path, tokenizer=tok).eval()
    eos = tok.eos_token_id
    model.config.pad_token_id = eos  # the common pad = EOS set-up
    seq = tok("the cat sat")["input_ids"] + [eos]  # a text that ends in EOS
    ids, att = pad_batch([seq, seq[:2]], eos)
    assert last_token_index(att).tolist() == [len(seq) - 1, 1]
    with torch.no_grad():
        ours = sequence_scores(model, ids, att)
        hidden = model.model(input_ids=ids[:1, : len(seq)]).last_hidden_state[0, -1]
        assert ours[0].item() == pytest.approx(model.score(hidden).item(), abs=1e-5)
        # transformers' own pooling looks for the rightmost non-pad token and so misses the EOS.
        theirs = model(input_ids=ids, attention_mask=att).logits[0, 0]
        assert theirs.item() != pytest.approx(ours[0].item(), abs=1e-6)


def test_left_truncation_keeps_the_end_of_the_response(tiny_gpt2):
    tok = load_tokenizer(tiny_gpt2)
    text = "the cat sat on the mat. " * 20 + "the very end."
    ids = encode_texts(tok, [text], 16)[0]
    assert len(ids) == 16
    assert tok.decode(ids).endswith("the very end.")
    assert ids[0] == tok.bos_token_id  # special tokens are added after truncation


def test_scorer_applies_stored_normalisation_and_chat_prompts(tmp_path):
    path = build_tiny(tmp_path / "rm", "gpt2", "reward")
    Normalisation(offset=0.25, scale=2.0, reference="test", n=3).save(path)
    rm = RewardScorer.from_pretrained(path)
    prompts = ["tell me a story.", [{"role": "user", "content": "tell me a story."}], "hi"]
    responses = [" once upon a time", " the end.", " good"]
    raw = rm.score(prompts, responses, batch_size=2, normalise=False)
    norm = rm.score(prompts, responses, batch_size=2)
    assert raw.shape == norm.shape == (3,)
    assert torch.allclose(norm, (raw - 0.25) / 2.0)
    # batching and order do not change a score
    assert torch.allclose(rm.score(prompts[::-1], responses[::-1], batch_size=1, normalise=False), raw.flip(0), atol=1e-5)
    with pytest.raises(ValueError):
        rm.score(["a"], ["b", "c"])


def test_normalisation_fit_gives_mean0_std1():
    raw = torch.tensor([1.0, 2.0, 3.0, 6.0])
    n = Normalisation.fit(raw)
    z = (raw - n.offset) / n.scale
    assert z.mean().item() == pytest.approx(0, abs=1e-6) and z.std(unbiased=False).item() == pytest.approx(1)


def test_common_prefix_length():
    from rankloop.reward.packing import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each keeps a token of its own
    assert common_prefix_length([[5], [5, 6]]) == 0


def test_ffd_rows_and_row_length():
    from rankloop.packing import choose_row_length, ffd_rows

    assert ffd_rows([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]  # 6+2, 5+3, 4 (longest first, first fit)
    assert sorted(i for r in ffd_rows([7] * 5 + [1] * 9, 10) for i in r) == list(range(14))
    # Small hidden size: attention over long rows is dear, so rows stay at the longest segment.
    assert choose_row_length([10, 10, 10, 10], hidden_size=1) == 10
    # Large hidden size: longer rows waste no positions (one row of 3 + 3 + 2 instead of rows of 3).
    assert choose_row_length([3, 3, 2], hidden_size=4096) == 8


def test_packed_tree_mask_hand_worked():
    """One ranking of 2 candidates sharing 2 prompt tokens: [p p a a | p p b] → [p p a a b]."""
    from rankloop.reward.packing import pack_rankings

    pb = pack_rankings([[[1, 2, 3, 4], [1, 2, 5]]], pad_id=0, causal=True, share_prefix=True, hidden_size=1)
    assert pb.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert pb.position_ids.tolist() == [[0, 1, 2, 3, 2]]  # b continues the prompt, not a
    assert pb.read_col.tolist() == [3, 4]
    allowed = (pb.attention_bias(torch.float32)[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [1, 1, 0, 0, 1]]  # b sees the prompt and itself, never a
    enc = pack_rankings([[[1, 2], [3]]], pad_id=0, causal=False, share_prefix=True, hidden_size=1)
    assert enc.read_col.tolist() == [0, 2] and enc.read_row.tolist() == [0, 0]  # [CLS] of each; encoders never share
    assert (enc.attention_bias(torch.float32)[0, 0] == 0).int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "bert"])
@pytest.mark.parametrize("lora", [False, True])
def test_packed_scores_and_grads_equal_padded(tmp_path_factory, arch, lora):
    """Packed candidates (causal: each ranking's common prefix once) give the scores and gradients of
    forwarding every whole padded sequence (ranking groups of different sizes and prefix lengths)."""
    from rankloop.models import apply_lora
    from rankloop.models import is_causal_scorer
    from rankloop.reward.model import ScoreModule
    from rankloop.reward.packing import can_pack, pack_rankings

    scorer_dir = build_tiny(tmp_path_factory.mktemp(f"packed-{arch}"), arch, "reward", seed=1)
    tok = load_tokenizer(scorer_dir)
    probe = load_sequence_scorer(scorer_dir, tokenizer=tok)
    causal = is_causal_scorer(probe)
    assert can_pack(probe) and causal == (arch != "bert")
    prompts = ["the cat sat on the mat and", "once upon a time", "good morning, said the little bird, and"]
    replies = [[" it slept.", " it ran away fast.", " then?", " the dog came too, wagging."],
               [" a king", " there lived a girl who sang"], [" flew.", " sang a song.", " sat."]]
    groups = [encode_texts(tok, [p + r for r in rs], 64) for p, rs in zip(prompts, replies)]
    packed = pack_rankings(groups, tok.pad_token_id, causal, True, probe.config.hidden_size)
    flat_seqs = [x for g in groups for x in g]
    assert packed.tokens < sum(len(x) for x in flat_seqs) if causal else packed.tokens == sum(map(len, flat_seqs))
    results = []
    for use_packed in (False, True):
        torch.manual_seed(0)
        model = load_sequence_scorer(scorer_dir, tokenizer=tok)
        model.eval()  # dropout off: the two paths must see the same function
        if lora:
            model = apply_lora(model, task="reward")
        module = ScoreModule(model)
        scores = module(packed=packed) if use_packed else module(*pad_batch(flat_seqs, tok.pad_token_id))
        (scores * torch.linspace(-1, 1, len(scores))).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((scores.detach(), grads))
    (s0, g0), (s1, g1) = results
    assert torch.allclose(s0, s1, atol=1e-5), (s0 - s1).abs().max()
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-5), (n, (g0[n] - g1[n]).abs().max())


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@pytest.mark.parametrize("policy_template", ["same", "none"])
def test_ppo_scores_chat_prompts_as_train_rm_reads_them(tmp_path, policy_template):
    """PPO hands the reward function the policy's rendering of each prompt; a reward-model directory
    still reads prompt + assistant turn through its own chat template, ending in the end-of-turn
    token, exactly as train-rm and eval-rm encode a ranking of the same prompt."""
    from rankloop.records import CandidateText, Prompt, RankedExample, Ranking
    from rankloop.reward.eval import encode_examples
    from rankloop.rl.rewards import call_reward, load_reward
    from rankloop.sampling import prompt_text

    rm_dir = build_tiny(tmp_path / "rm", "gpt2", "reward", seed=2)
    tok = load_tokenizer(rm_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(rm_dir)
    policy_tok = load_tokenizer(rm_dir, padding_side="left")
    if policy_template == "none":
        policy_tok.chat_template = None
    messages = [{"role": "user", "content": "tell me about the cat."}]
    responses = [" the cat sat on the mat.", " go away."]

    example = RankedExample(prompt_id="p", prompt=messages,
                            candidates=[CandidateText(id=str(i), text=r) for i, r in enumerate(responses)],
                            ranking=Ranking(prompt_id="p", order=["0", "1"]))
    ids = encode_examples([example], tok, 128)[0].ids  # what train-rm and eval-rm forward
    assert tok.decode(ids[0]).endswith("assistant:  the cat sat on the mat.</s>")
    model = load_sequence_scorer(rm_dir, tokenizer=tok).eval()
    with torch.no_grad():
        trained = sequence_scores(model, *pad_batch(ids, tok.pad_token_id))

    texts = [prompt_text(Prompt(id="p", messages=messages), policy_tok)] * 2  # what run_ppo passes
    ppo = call_reward(load_reward(rm_dir), texts, responses)
    assert ppo == pytest.approx(trained.tolist(), abs=1e-6)
    # Functions still receive plain strings: the policy's own rendering.
    assert isinstance(texts[0], str) and texts[0] == (
        "<s>user: tell me about the cat.</s><s>assistant:" if policy_template == "same"
        else "\n\nHuman: tell me about the cat.\n\nAssistant:")
