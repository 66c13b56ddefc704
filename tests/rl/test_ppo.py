"""PPO on real tiny models: smoke, invariants (KL = 0 at the start, grad accumulation, 2-process DDP,
resume after SIGKILL), guards and the CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankloop.rl.ppo import NonFiniteError, PPOConfig, run_ppo
from rankloop.sampling import PromptTooLongError

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
PROMPT_TEXTS = ["the cat sat", "a dog ran", "once upon a time", "good morning", "she likes", "i hate rain",
                "this is great", "the little bird"]


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PROMPT_TEXTS)))
    return p


def small_cfg(policy, out, prompts, **kw):
    base = dict(policy=str(policy), output=str(out), prompts=str(prompts), reward="rankloop.rl.rewards:length",
                iterations=2, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=6,
                learning_rate=3e-3, progress=False, tensorboard=False)
    base.update(kw)
    return PPOConfig(**base)


def weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def assert_same(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_ppo_smoke_moves_parameters_and_logs_metrics(tiny_gpt2, prompts_file, tmp_path):
    out = run_ppo(small_cfg(tiny_gpt2, tmp_path / "run", prompts_file))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for name in ("ppo/approx_kl", "ppo/clip_frac", "ppo/kl_ref", "objective/reward", "objective/reward_penalised",
                 "objective/entropy", "value/explained_variance", "response/length", "kl_coef", "time/iteration"):
        assert name in rows[0] and math.isfinite(rows[0][name]), name
    # The policy starts equal to the reference: the first rollout's KL is 0 up to float rounding
    # (log π_θold comes from the sampler's KV-cache decode; see the exact test below).
    assert 0.0 <= rows[0]["ppo/kl_ref"] < 1e-5 and abs(rows[0]["objective/kl_k1"]) < 1e-4
    assert rows[1]["ppo/kl_ref"] > 0.0
    before, after = weights(tiny_gpt2), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    vh = load_file(str(out / "value_head.safetensors"))
    assert set(vh) == {"value_head.weight", "value_head.bias"} and vh["value_head.weight"].abs().sum() > 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out))
    assert json.loads((out / "ppo_config.json").read_text())["iterations"] == 2


def test_first_rollout_kl_exactly_zero_with_forward_logprobs(tiny_gpt2, prompts_file, tmp_path):
    out = run_ppo(small_cfg(tiny_gpt2, tmp_path / "run", prompts_file, iterations=1, old_logprobs="forward"))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["ppo/kl_ref"] == 0.0 and row["objective/kl_k1"] == 0.0


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_packed_teacher_forced_pass_equals_padded(tmp_path_factory, arch):
    """The update's forward on packed rows (left padding and post-stop padding left out) gives the
    padded forward's log-probs, values and gradients at every real response position."""
    from rankloop.models import load_causal_lm, load_tokenizer
    from rankloop.testing import build_tiny
    from rankloop.packing import pack_padded, worth_packing
    from rankloop.ops import logprobs_from_logits
    from rankloop.rl.rollout import PolicyWithValue
    from rankloop.sampling import generate

    d = build_tiny(tmp_path_factory.mktemp(f"pack-{arch}"), arch, "causal")
    tok = load_tokenizer(d, "left")
    s = generate(load_causal_lm(d, tokenizer=tok), tok, PROMPT_TEXTS, max_new_tokens=7, seed=3,
                 stop_token_ids=list(range(3, 60)))
    m = s.response_mask.bool()
    assert (s.attention_mask[:, : s.prompt_ids.size(1)] == 0).any() and (~m).any()  # both kinds of padding
    ids, am = s.input_ids[:, :-1], s.attention_mask[:, :-1]
    assert worth_packing(pack_padded(ids, am, s.prompt_ids.size(1) - 1, 32).input_ids.numel(), ids.numel())  # packed path runs
    out = []
    for pack in (False, True):
        torch.manual_seed(0)
        pol = PolicyWithValue(load_causal_lm(d, tokenizer=tok), value_head_std=0.1, pack=pack).eval()
        logits, values = pol(s.input_ids, s.attention_mask, s.prompt_ids.size(1), 0.7)
        logp = logprobs_from_logits(logits, s.response_ids)
        ((logp * m).sum() + (values * m).pow(2).sum()).backward()
        out.append((logp[m].detach(), values[m].detach(), {n: p.grad for n, p in pol.named_parameters()}))
    (l0, v0, g0), (l1, v1, g1) = out
    assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(v0, v1, atol=1e-5)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-5), (n, (g0[n] - g1[n]).abs().max())


def test_sampler_policy_stats_match_the_teacher_forced_forward(tiny_llama):
    """The log-probs, entropies and values the sampler keeps equal a forward pass of the policy."""
    from rankloop.models import load_causal_lm, load_tokenizer
    from rankloop.rl.rollout import PolicyWithValue, Reference, forward_in_chunks
    from rankloop.sampling import generate

    tok = load_tokenizer(tiny_llama, "left")
    lm = load_causal_lm(tiny_llama, tokenizer=tok)
    pol = PolicyWithValue(lm, value_head_std=0.1).eval()
    ref = Reference.frozen_copy(lm)
    for temperature, chunk in ((1.0, 3), (0.7, 64)):
        s = generate(lm, tok, PROMPT_TEXTS, max_new_tokens=7, seed=1, temperature=temperature, top_k=20,
                     stop_token_ids=list(range(3, 60)), batch_size=chunk, policy_stats=True)
        assert s.logprobs.shape == s.response_ids.shape and s.hidden.shape[:2] == s.response_ids.shape
        args = (s.input_ids, s.attention_mask, s.response_ids, s.prompt_ids.size(1), temperature, 4)
        exact = forward_in_chunks(pol, ref, *args)
        kept = forward_in_chunks(pol, ref, *args, sampled=s)
        m = s.response_mask.bool()
        assert (s.response_mask == 0).any()  # some rows stopped early: padding is covered
        for k in ("old_logp", "entropy", "values"):
            a, b = getattr(kept, k), getattr(exact, k)
            assert torch.allclose(a[m], b[m], atol=1e-5), (k, (a - b)[m].abs().max())
            assert a[~m].abs().sum() == 0 or k == "values"
        assert torch.equal(kept.ref_logp, exact.ref_logp)


def test_kl_terms_zero_when_policy_is_reference(tiny_llama):
    """Frozen copy and LoRA-disabled reference both give exactly the policy's log-probs at start."""
    from rankloop.models import apply_lora, load_causal_lm, load_tokenizer
    from rankloop.rl.kl import kl_estimate
    from rankloop.rl.rollout import PolicyWithValue, Reference, forward_in_chunks
    from rankloop.sampling import generate

    tok = load_tokenizer(tiny_llama, "left")
    for lora in (False, True):
        lm = load_causal_lm(tiny_llama, tokenizer=tok)
        if lora:
            lm = apply_lora(lm)
            ref = Reference(lm, shares_policy=True)
        else:
            ref = Reference.frozen_copy(lm)
        pol = PolicyWithValue(lm).eval()
        s = generate(lm, tok, PROMPT_TEXTS, max_new_tokens=5, seed=0)
        fw = forward_in_chunks(pol, ref, s.input_ids, s.attention_mask, s.response_ids, s.prompt_ids.size(1), 1.0, 3)
        for k in ("k1", "k2", "k3"):
            assert kl_estimate(fw.old_logp, fw.ref_logp, k).abs().max() == 0
    # LoRA: one set of base weights, the reference is the same module
    assert ref.lm is lm


def test_lora_and_freeze_run(tiny_gpt2, prompts_file, tmp_path):
    out = run_ppo(small_cfg(tiny_gpt2, tmp_path / "lora", prompts_file, lora=True, iterations=1))
    assert (out / "adapter" / "adapter_config.json").exists()
    assert_same_keys = set(weights(out)) == set(weights(tiny_gpt2))
    assert assert_same_keys
    out2 = run_ppo(small_cfg(tiny_gpt2, tmp_path / "frozen", prompts_file, freeze_layers=1, iterations=1))
    b, a = weights(tiny_gpt2), weights(out2)
    assert torch.equal(b["transformer.h.0.attn.c_attn.weight"], a["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(b["transformer.wte.weight"], a["transformer.wte.weight"])
    assert not torch.equal(b["transformer.h.1.attn.c_attn.weight"], a["transformer.h.1.attn.c_attn.weight"])


def test_separate_critic_and_adaptive_kl(tiny_gpt2, prompts_file, tmp_path):
    out = run_ppo(small_cfg(tiny_gpt2, tmp_path / "crit", prompts_file, critic="separate", kl_control="adaptive",
                            kl_target=0.01, kl_horizon=16, iterations=3))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # KL is 0 < target at the first iteration → β falls; the controller's state follows its formula.
    assert rows[0]["kl_coef_next"] == pytest.approx(0.05 * (1 - 0.2 * 8 / 16))
    assert any(k.startswith("critic.") for k in load_file(str(out / "value_head.safetensors")))


def test_grad_accumulation_equals_bigger_minibatch(tiny_gpt2, prompts_file, tmp_path):
    # Adam's first steps are ≈ lr·sign(g): a larger eps keeps float noise in near-zero gradients
    # from being blown up to a full step, so the comparison can be tight.
    def cfg(*a, **kw):
        return small_cfg(*a, adam_eps=1e-4, **kw)

    a = run_ppo(cfg(tiny_gpt2, tmp_path / "a", prompts_file, grad_accum_steps=1, max_grad_norm=None))
    b = run_ppo(cfg(tiny_gpt2, tmp_path / "b", prompts_file, grad_accum_steps=4, max_grad_norm=None))
    assert_same(weights(a), weights(b), atol=2e-6)
    c = run_ppo(cfg(tiny_gpt2, tmp_path / "c", prompts_file, grad_accum_steps=2))  # with clipping too
    d = run_ppo(cfg(tiny_gpt2, tmp_path / "d", prompts_file, grad_accum_steps=1))
    assert_same(weights(c), weights(d), atol=2e-6)


def test_nan_reward_stops_with_step_and_last_good_checkpoint(tiny_gpt2, prompts_file, tmp_path):
    calls = {"n": 0}

    def reward(prompts, responses):
        calls["n"] += 1
        return [math.nan if calls["n"] == 2 else 1.0 for _ in responses]

    cfg = small_cfg(tiny_gpt2, tmp_path / "nan", prompts_file, iterations=3)
    with pytest.raises(NonFiniteError) as e:
        run_ppo(cfg, reward_fn=reward)
    msg = str(e.value)
    ckpt = tmp_path / "nan" / "checkpoints" / "iter-000001"
    assert "rewards" in msg and "iteration 2" in msg and "score" in msg and str(ckpt) in msg
    assert (ckpt / "state.json").exists() and (ckpt / "trainable.safetensors").exists()
    assert not (tmp_path / "nan" / "checkpoints" / "iter-000002").exists()
    assert json.loads((ckpt / "state.json").read_text())["iteration"] == 1


def test_over_long_prompt_fails_before_training(tiny_gpt2, prompts_file, tmp_path):
    with pytest.raises(PromptTooLongError, match="truncate"):
        run_ppo(small_cfg(tiny_gpt2, tmp_path / "long", prompts_file, max_prompt_tokens=2))
    out = run_ppo(small_cfg(tiny_gpt2, tmp_path / "trunc", prompts_file, max_prompt_tokens=2,
                            truncate_prompts=True, iterations=1))
    assert (out / "model.safetensors").exists()


def test_reward_model_directory(tiny_gpt2, prompts_file, tmp_path):
    from rankloop.testing import build_tiny

    rm = build_tiny(tmp_path / "rm", "gpt2", "reward", seed=1)
    out = run_ppo(small_cfg(tiny_gpt2, tmp_path / "rmrun", prompts_file, reward=str(rm), iterations=1))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["objective/reward"]) and row["objective/reward"] != 0


def _cli(args, env=None, **kw):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([PY, "-m", "rankloop.cli", *args], cwd=ROOT, env=e, capture_output=True, text=True, **kw)


def _ppo_args(policy, prompts, out, iterations):
    return ["ppo", "--policy", str(policy), "--reward", "rankloop.rl.rewards:length", "--prompts", str(prompts),
            "--output", str(out), "--iterations", str(iterations), "--batch-size", "8", "--minibatch-size", "4",
            "--ppo-epochs", "2", "--max-new-tokens", "6", "--lr", "3e-3", "--no-progress"]


def test_cli_sigkill_then_resume_equals_uninterrupted(tiny_gpt2, prompts_file, tmp_path):
    full = tmp_path / "full"
    r = _cli(_ppo_args(tiny_gpt2, prompts_file, full, 5))
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([PY, "-m", "rankloop.cli", *_ppo_args(tiny_gpt2, prompts_file, killed, 5)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "iter-000002" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    r = _cli(_ppo_args(tiny_gpt2, prompts_file, killed, 5) + ["--resume"])
    assert r.returncode == 0, r.stderr
    assert_same(weights(full), weights(killed))
    assert_same(load_file(str(full / "value_head.safetensors")), load_file(str(killed / "value_head.safetensors")))
    rows = [json.loads(x)["iteration"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5]


def test_non_finite_policy_stops_in_the_rollout_with_the_step(tiny_gpt2, prompts_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bad = tmp_path / "nan-policy"
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    with torch.no_grad():
        lm.lm_head.weight[:] = math.nan  # tied to the embeddings: every logit is NaN
    lm.save_pretrained(str(bad))
    AutoTokenizer.from_pretrained(str(tiny_gpt2)).save_pretrained(str(bad))
    with pytest.raises(NonFiniteError, match=r"non-finite logits while sampling .* iteration 1, step 'rollout'.*"
                                             r"none \(no checkpoint written yet\)"):
        run_ppo(small_cfg(bad, tmp_path / "run", prompts_file, iterations=1))


def test_cli_nan_exit_code_and_message(tiny_gpt2, prompts_file, tmp_path):
    r = _cli(["ppo", "--policy", str(tiny_gpt2), "--reward", "rankloop.testing:nan_reward", "--prompts",
              str(prompts_file), "--output", str(tmp_path / "o"), "--iterations", "1", "--batch-size", "8",
              "--minibatch-size", "4", "--max-new-tokens", "4", "--no-progress"])
    assert r.returncode == 3
    assert "non-finite rewards at iteration 1" in r.stderr and "none (no checkpoint written yet)" in r.stderr


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process(tiny_gpt2, prompts_file, tmp_path):
    one = tmp_path / "one"
    r = _cli(_ppo_args(tiny_gpt2, prompts_file, one, 2))
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                        "-m", "rankloop.cli", *_ppo_args(tiny_gpt2, prompts_file, two, 2)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same(weights(one), weights(two), atol=5e-5)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(m1, m2):
        assert a["objective/reward"] == pytest.approx(b["objective/reward"], abs=1e-6)
        assert a["ppo/approx_kl"] == pytest.approx(b["ppo/approx_kl"], rel=1e-3, abs=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("critic, wrap, port", [("shared", None, 29545), ("separate", "GPT2Block", 29546)])
def test_two_processes_fsdp2_equal_one_process(tiny_gpt2, prompts_file, tmp_path, critic, wrap, port):
    """FSDP2 as a user launches it (accelerate with examples/accelerate/fsdp2.yaml): the policy and its
    value head (or separate critic) sharded, the reference and the reward replicated, sampling on the
    gathered weights; the whole model one FSDP unit, or (``wrap``) one unit per decoder layer."""
    conf = tmp_path / "critic.yaml"
    conf.write_text(f"critic: {critic}\n")
    one = tmp_path / "one"
    r = _cli([*_ppo_args(tiny_gpt2, prompts_file, one, 2), "--config", str(conf)])
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    r = subprocess.run([PY, "-m", "accelerate.commands.launch", "--config_file",
                        str(ROOT / "examples/accelerate/fsdp2.yaml"), "--num_processes", "2", "--main_process_port",
                        str(port), *(["--fsdp_transformer_layer_cls_to_wrap", wrap] if wrap else []),
                        "-m", "rankloop.cli", *_ppo_args(tiny_gpt2, prompts_file, two, 2), "--config", str(conf)],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((two / "checkpoints" / "iter-000002" / "state.json").read_text())
    assert state["fsdp"] is True and not (two / "checkpoints" / "iter-000002" / "optimizer.pt").exists()
    # Tolerance: as the DDP test's (the same sums reduced in another order).
    assert_same(weights(one), weights(two), atol=5e-5)
    heads = [load_file(str(d / "value_head.safetensors")) for d in (one, two)]
    assert_same(*heads, atol=5e-5)
    assert any(v.abs().max() > 0 for v in heads[1].values())  # (trained away from its zero initialisation)
    assert any(k.startswith("critic.") for k in heads[1]) is (critic == "separate")
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        assert a["objective/reward"] == pytest.approx(b["objective/reward"], abs=1e-6)
        assert a["ppo/approx_kl"] == pytest.approx(b["ppo/approx_kl"], rel=1e-3, abs=1e-7)
        assert a["ppo/value_loss"] == pytest.approx(b["ppo/value_loss"], rel=1e-4)


def test_reference_other_than_the_policy_anchors_the_kl(tiny_gpt2, prompts_file, tmp_path):
    """A second round starts from the round-1 policy but keeps the KL against the original model:
    the first rollout's KL is then > 0 (it would be exactly 0 against the round-1 policy itself)."""
    first = run_ppo(small_cfg(tiny_gpt2, tmp_path / "r1", prompts_file))
    again = run_ppo(small_cfg(first, tmp_path / "r2-self", prompts_file, iterations=1))
    anchored = run_ppo(small_cfg(first, tmp_path / "r2-orig", prompts_file, iterations=1, reference=str(tiny_gpt2)))
    kl_self = json.loads((again / "metrics.jsonl").read_text().splitlines()[0])["ppo/kl_ref"]
    kl_orig = json.loads((anchored / "metrics.jsonl").read_text().splitlines()[0])["ppo/kl_ref"]
    assert kl_self < 1e-5
    assert kl_orig > 1e-3


def test_tiny_heads_get_eager_attention_on_cpu(tmp_path):
    """Head size ≤ 8 on CPU: eager attention (faster than torch's CPU SDPA there); larger heads and
    GPUs keep SDPA. The PPO run on such a model trains and its first KL is still ~0."""
    from rankloop.models import load_causal_lm, prefer_cpu_attention
    from rankloop.testing import build_tiny

    small = build_tiny(tmp_path / "h8", "llama", hidden=32, heads=4)  # head size 8
    wide = build_tiny(tmp_path / "h16", "llama", hidden=32, heads=2)  # head size 16
    assert prefer_cpu_attention(load_causal_lm(small), "cpu") == "eager"
    assert prefer_cpu_attention(load_causal_lm(small), "cuda") == "sdpa"
    assert prefer_cpu_attention(load_causal_lm(wide), "cpu") == "sdpa"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PROMPT_TEXTS)))
    out = run_ppo(small_cfg(small, tmp_path / "run", prompts, iterations=1))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(row["ppo/kl_ref"]) <= 1e-5 and math.isfinite(row["ppo/policy_loss"])
