"""Memory settings (docs/gpu.md): gradient checkpointing gives the same gradients as without; the
chunked LM head (``logprob_chunk``) gives the same log-probs and gradients as the plain one, in
the op and in every update path that uses it; the offloaded reference lives on its home device
between uses and computes the same log-probs."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankloop.models import enable_gradient_checkpointing, load_causal_lm
from rankloop.ops import entropy_from_logits, head_logprobs, logprobs_from_logits

PROMPTS = ["the cat", "a dog ran", "once upon a time", "she likes", "good morning", "the park was",
           "a little bird", "warm bread and"]


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_close(a: dict, b: dict, atol: float, rtol: float = 0.0):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=rtol), (k, float((a[k] - b[k]).abs().max()))


# ---------------------------------------------------------------- the chunked LM head


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_equals_plain_values_and_gradients(chunk, temperature):
    torch.manual_seed(0)
    H, V = 16, 50
    head = torch.nn.Linear(H, V)
    h = torch.randn(3, 9, H, requires_grad=True)
    tokens = torch.randint(0, V, (3, 9))
    w = torch.randn(3, 9)  # a loss weighting both outputs, so every gradient path is exercised

    def run(c):
        for p in (h, *head.parameters()):
            p.grad = None
        if c is None:  # the plain computation, written out
            logits = head(h) / temperature
            lp, ent = logprobs_from_logits(logits, tokens), entropy_from_logits(logits)
        else:
            lp, ent = head_logprobs(h, head, tokens, c, temperature, entropy=True)
        ((lp + 0.3 * ent) * w).sum().backward()
        return lp.detach(), ent.detach(), {"h": h.grad.clone(), **grads(head)}

    lp0, ent0, g0 = run(None)
    lp1, ent1, g1 = run(chunk)
    assert lp1.shape == tokens.shape and ent1.shape == tokens.shape
    assert torch.allclose(lp0, lp1, atol=1e-6, rtol=0) and torch.allclose(ent0, ent1, atol=1e-6, rtol=0)
    assert_close(g0, g1, atol=1e-6)


def test_chunk_zero_is_the_plain_arithmetic_bit_for_bit():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 20)
    h, t = torch.randn(2, 5, 8), torch.randint(0, 20, (2, 5))
    lp, ent = head_logprobs(h, head, t, 0)
    assert ent is None and torch.equal(lp, logprobs_from_logits(head(h), t))


def test_chunked_backward_never_holds_the_whole_logits():
    """The autograd graph keeps each chunk's (chunk,) outputs and the inputs, not (n, V) logits:
    measured as the bytes of the tensors saved for backward."""
    torch.manual_seed(0)
    n, H, V, chunk = 512, 8, 4096, 64
    head = torch.nn.Linear(H, V, bias=False)
    h = torch.randn(n, H, requires_grad=True)
    t = torch.randint(0, V, (n,))
    saved = []

    def pack(x):
        saved.append(x.numel() * x.element_size())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        head_logprobs(h, head, t, chunk)[0].sum()
    chunked = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        head_logprobs(h, head, t, 0)[0].sum()
    plain = sum(saved)
    assert plain >= n * V * 4  # the whole float32 logits (at least once)
    assert chunked < n * V * 4 / 4, (chunked, plain)


# ---------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_gradient_checkpointing_same_gradients(arch, train_mode, tmp_path):
    from rankloop.testing import build_tiny

    path = build_tiny(tmp_path / arch, arch, "causal")
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 12))
    out = {}
    for ckpt in (False, True):
        lm = load_causal_lm(path)
        if ckpt:
            assert enable_gradient_checkpointing(lm) == 2
        lm.train(train_mode)
        torch.manual_seed(1)  # (the same dropout masks, where there is dropout)
        lm(input_ids=ids, labels=ids).loss.backward()
        out[ckpt] = grads(lm)
    assert_close(out[False], out[True], atol=1e-6)


def test_checkpointed_copy_runs_its_own_weights(tiny_gpt2):
    """A deepcopy of a checkpointed model (the frozen reference, a separate critic) computes with the
    copy's weights, not the original's."""
    lm = load_causal_lm(tiny_gpt2)
    enable_gradient_checkpointing(lm)
    ref = copy.deepcopy(lm)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.1)
    ids = torch.randint(3, 300, (2, 8))
    fresh = load_causal_lm(tiny_gpt2)
    with torch.no_grad():
        assert torch.allclose(ref(input_ids=ids).logits, fresh(input_ids=ids).logits, atol=1e-6)


# ---------------------------------------------------------------- every update path, chunked = plain


def test_policy_with_value_chunked_equals_plain(tiny_gpt2):
    from rankloop.rl.rollout import PolicyWithValue

    torch.manual_seed(0)
    lm = load_causal_lm(tiny_gpt2)
    pol = PolicyWithValue(lm, value_head_std=0.1)
    ids = torch.randint(3, 300, (4, 14))
    am = torch.ones_like(ids)
    am[0, :3] = 0  # left padding of one prompt
    resp = ids[:, 6:]
    out = {}
    for chunk in (0, 5):
        pol.zero_grad(set_to_none=True)
        if chunk:
            (lp, ent), v = pol(ids, am, 6, 0.8, resp, chunk, entropy=True)
        else:
            logits, v = pol(ids, am, 6, 0.8)
            lp, ent = logprobs_from_logits(logits, resp), entropy_from_logits(logits)
        (lp.sum() + ent.mean() + v.sum()).backward()
        out[chunk] = (lp.detach(), ent.detach(), grads(pol))
    assert torch.allclose(out[0][0], out[5][0], atol=1e-6) and torch.allclose(out[0][1], out[5][1], atol=1e-6)
    # float32 rounding of sums taken chunk by chunk: ~1e-7 relative (the gradients reach ~300 here)
    assert_close(out[0][2], out[5][2], atol=1e-5, rtol=1e-5)


def _rl(cls, policy, out, prompts, **kw):
    base = dict(policy=str(policy), output=str(out), prompts=str(prompts), reward="rankloop.rl.rewards:length",
                iterations=2, batch_size=8, minibatch_size=4, max_new_tokens=6, learning_rate=3e-3,
                progress=False, tensorboard=False, adam_eps=1e-4)
    if cls.__name__ != "PPOConfig":
        base.update(samples_per_prompt=2, batch_size=4, epochs=1)
    else:
        base.update(ppo_epochs=1, ent_coef=0.01)
    base.update(kw)
    return cls(**base)


@pytest.fixture
def prompts(tmp_path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PROMPTS)))
    return p


def _w(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("learner", ["ppo", "grpo"])
@pytest.mark.parametrize("setting", [{"logprob_chunk": 3}, {"gradient_checkpointing": True}])
def test_rl_run_with_memory_setting_equals_without(learner, setting, tiny_gpt2, prompts, tmp_path):
    from rankloop.rl.config import GRPOConfig, PPOConfig
    from rankloop.rl.grpo import run_grpo
    from rankloop.rl.ppo import run_ppo

    cls, run = (PPOConfig, run_ppo) if learner == "ppo" else (GRPOConfig, run_grpo)
    a = run(_rl(cls, tiny_gpt2, tmp_path / "plain", prompts))
    b = run(_rl(cls, tiny_gpt2, tmp_path / "mem", prompts, **setting))
    assert_close(_w(a), _w(b), atol=1e-5)


@pytest.mark.parametrize("trainer", ["sft", "dpo", "rm"])
@pytest.mark.parametrize("setting", [{"logprob_chunk": 5}, {"gradient_checkpointing": True}])
def test_supervised_run_with_memory_setting_equals_without(trainer, setting, tiny_gpt2, tmp_path):
    from rankloop.io import write_rankings
    from rankloop.testing import synthetic_rankings

    if trainer == "rm" and "logprob_chunk" in setting:
        pytest.skip("train-rm has no LM head (its scalar head reads one position)")
    base = dict(model=str(tiny_gpt2), lr=3e-3, batch_size=4, max_steps=3, progress=False, log_every=1,
                tensorboard=False)
    if trainer == "sft":
        from rankloop.sft.config import SFTConfig as C
        from rankloop.sft.train import train_sft as run

        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps({"prompt": p, "completion": " and then it was a good day."}) + "\n"
                                for p in PROMPTS))
    else:
        data = tmp_path / "rank.jsonl"
        write_rankings(data, synthetic_rankings(16, k=4, seed=0))
        if trainer == "dpo":
            from rankloop.dpo.config import DPOConfig as C
            from rankloop.dpo.train import train_dpo as run

            base["kl_prompts"] = 0
        else:
            from rankloop.reward.config import RewardTrainConfig as C
            from rankloop.reward.train import train_reward_model as run

            base["normalise_on"] = "none"
    a = run(C(data=str(data), output=str(tmp_path / "plain"), **base))
    b = run(C(data=str(data), output=str(tmp_path / "mem"), **base, **setting))
    ra, rb = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()], \
        [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ra, rb, strict=True):  # every step's loss and gradient norm: the gradients agree
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    # Adam divides by √v: where a gradient is ~0, float32 rounding of the chunked sums (~1e-7) can move a
    # weight by up to lr per step, so the weights get a looser bound for the chunked head (3 steps at 3e-3)
    assert_close(_w(a), _w(b), atol=1e-5 if "gradient_checkpointing" in setting else 1e-3)


# ---------------------------------------------------------------- offload


def test_offloaded_reference_lives_home_between_uses_and_scores_the_same(tiny_gpt2):
    from rankloop.rl.rollout import Reference

    lm = load_causal_lm(tiny_gpt2)
    ref = Reference.frozen_copy(lm)
    ref.home = torch.device("cpu")
    ids = torch.randint(3, 300, (2, 10))
    am = torch.ones_like(ids)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with ref.on(device):
        assert next(ref.lm.parameters()).device.type == device.type
        got = ref.logits(ids.to(device), am.to(device), 4).cpu()
    assert next(ref.lm.parameters()).device == torch.device("cpu")
    plain = Reference.frozen_copy(lm).logits(ids, am, 4)
    assert torch.allclose(got, plain, atol=1e-5)
    shared = Reference(lm, shares_policy=True)  # LoRA's: the policy's own weights are never moved
    shared.home = torch.device("cpu")
    with shared.on(device):
        pass


def test_offload_reward_model_moves_for_scoring_and_back(tmp_path):
    from rankloop.rl.rewards import load_reward
    from rankloop.testing import build_tiny

    rm = build_tiny(tmp_path / "rm", "gpt2", "reward")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain = load_reward(str(rm), device="cpu")
    off = load_reward(str(rm), device="cpu", offload_to=device)
    p, r = ["the cat", "a dog"], [" sat on the mat.", " ran."]
    assert off(p, r) == pytest.approx(plain(p, r), abs=1e-5)
