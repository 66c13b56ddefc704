"""Mixed precision (docs/gpu.md): one ``dtype`` and one ``precision`` meaning the same in every
command; bfloat16 runs of every trainer within a stated tolerance of float32; the loss math in
float32 whatever the weights' dtype; float32 master weights where the weights are bfloat16.

bfloat16 matmuls are ~100x slower than float32 on this CPU: the models are tiny and the runs a
few steps. The tolerance is in ``close``: bfloat16 keeps 8 significant bits (relative rounding
2^-9 ≈ 0.2 % per operation), and a few steps of a 2-layer model stay within 3 % of float32's loss.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from rankloop.config import ConfigError, check_precision, mixed_precision, weights_dtype
from rankloop.dpo.config import DPOConfig
from rankloop.io import write_rankings
from rankloop.models import MasterWeightAdamW, adamw
from rankloop.reward.config import RewardTrainConfig
from rankloop.rl.config import GRPOConfig, PPOConfig, RLConfig, RLOOConfig
from rankloop.sample import SampleConfig
from rankloop.sft.config import SFTConfig
from rankloop.testing import synthetic_rankings

REL = 3e-2  # the tolerance of a bfloat16 loss against float32's (see the module docstring)

PROMPTS = ["the cat", "a dog ran", "once upon a time", "she likes", "good morning", "the park was",
           "a little bird", "warm bread and"]


def close(a: float, b: float, rel: float = REL, abs_: float = 1e-2) -> bool:
    return abs(a - b) <= rel * abs(b) + abs_


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("precision-data")
    write_rankings(d / "rank.jsonl", synthetic_rankings(16, k=4, seed=0))
    (d / "sft.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": " and then it was a good day."})
                                         + "\n" for p in PROMPTS))
    (d / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n"
                                             for i, t in enumerate(PROMPTS)))
    return {"rank": d / "rank.jsonl", "sft": d / "sft.jsonl", "prompts": d / "prompts.jsonl"}


# ---------------------------------------------------------------- one meaning in every command


@pytest.mark.parametrize("cls", [RewardTrainConfig, SFTConfig, DPOConfig, PPOConfig, RLOOConfig, GRPOConfig])
def test_every_trainer_has_the_same_precision_fields(cls):
    for name in ("dtype", "precision", "gradient_checkpointing"):
        assert name in cls.model_fields, (cls.__name__, name)
    assert cls.model_fields["dtype"].annotation == RLConfig.model_fields["dtype"].annotation
    assert cls.model_fields["dtype"].description == RLConfig.model_fields["dtype"].description
    assert cls.model_fields["precision"].default == "autocast"
    assert SampleConfig.model_fields["dtype"].annotation == cls.model_fields["dtype"].annotation


def test_precision_settings_map_to_weights_and_autocast():
    assert weights_dtype("bfloat16", "autocast") == "float32"
    assert weights_dtype("bfloat16", "weights") == "bfloat16"
    assert mixed_precision("float32", "autocast") == "no"
    assert mixed_precision("bfloat16", "autocast") == "bf16"
    assert mixed_precision("float16", "autocast") == "fp16"
    assert mixed_precision("bfloat16", "weights") == "no"
    with pytest.raises(ValueError, match="float16 with precision='weights'"):
        check_precision("float16", "weights")


def test_bad_dtype_and_fp16_weights_are_refused_naming_the_field():
    with pytest.raises(Exception, match="dtype"):
        SFTConfig(data="d", model="m", output="o", dtype="float64")
    with pytest.raises(Exception, match="precision='weights'"):
        PPOConfig(policy="p", output="o", dtype="float16", precision="weights")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_fp16_autocast_on_cpu_is_refused_not_silently_float32(tmp_path, tiny_gpt2, data):
    from rankloop.sft.train import train_sft

    cfg = SFTConfig(data=str(data["sft"]), model=str(tiny_gpt2), output=str(tmp_path / "o"), dtype="float16",
                    max_steps=1, progress=False, tensorboard=False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train_sft(cfg)


# ---------------------------------------------------------------- float32 master weights


def test_master_weights_keep_updates_bfloat16_would_round_away():
    torch.manual_seed(0)
    w32 = torch.nn.Parameter(torch.ones(64))
    w16 = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))], lr=1e-4)
    master = adamw([w16], lr=1e-4, weight_decay=0.0)
    ref = adamw([w32], lr=1e-4, weight_decay=0.0)
    assert isinstance(master, MasterWeightAdamW) and not isinstance(ref, MasterWeightAdamW)
    for _ in range(50):  # 50 steps of 1e-4: 5e-3 in all, each step below bfloat16's spacing at 1 (7.8e-3)
        for p, opt in ((w16, master), (w32, ref), (plain.param_groups[0]["params"][0], plain)):
            p.grad = torch.ones_like(p)
            opt.step()
            opt.zero_grad()
    assert plain.param_groups[0]["params"][0].float().eq(1.0).all()  # in place: every update rounded away
    m = master.param_groups[0]["params"][0]
    assert m.dtype == torch.float32 and torch.allclose(m, w32.detach(), atol=1e-6)  # the master moved as float32
    assert torch.equal(w16.detach(), m.detach().to(torch.bfloat16))  # the model holds it rounded


def test_master_weights_state_dict_round_trip_continues_the_unrounded_weights():
    w = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = adamw([w], lr=1e-3)
    w.grad = torch.ones_like(w)
    opt.step()
    sd = opt.state_dict()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = adamw([w2], lr=1e-3)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.param_groups[0]["params"][0], opt.param_groups[0]["params"][0])
    for o, p in ((opt, w), (opt2, w2)):
        p.grad = torch.ones_like(p)
        o.step()
    assert torch.equal(w, w2)


# ---------------------------------------------------------------- the loss math receives float32


def test_logprob_math_is_float32_from_bfloat16_logits():
    from rankloop.ops import entropy_from_logits, head_logprobs, logprobs_from_logits

    logits = torch.randn(2, 5, 11).to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 5))
    assert logprobs_from_logits(logits, tokens).dtype == torch.float32
    assert entropy_from_logits(logits).dtype == torch.float32
    head = torch.nn.Linear(4, 11).to(torch.bfloat16)
    lp, ent = head_logprobs(torch.randn(2, 5, 4).to(torch.bfloat16), head, tokens, chunk=3, entropy=True)
    assert lp.dtype == ent.dtype == torch.float32


def test_ppo_loss_math_receives_float32_under_bfloat16(tmp_path, tiny_gpt2, data, monkeypatch):
    """The real PPO run, bfloat16 weights: every input of the policy loss, value loss and GAE is float32
    (recorded by wrapping the real functions, which still compute the run)."""
    import rankloop.rl.ppo as ppo

    seen: dict[str, set] = {}

    def spy(name, fn):
        def wrapped(*args, **kw):
            seen.setdefault(name, set()).update(str(a.dtype) for a in args if isinstance(a, torch.Tensor)
                                                and a.is_floating_point())
            return fn(*args, **kw)
        return wrapped

    for name in ("policy_loss", "value_loss", "gae", "kl_penalised_rewards", "masked_whiten"):
        monkeypatch.setattr(ppo, name, spy(name, getattr(ppo, name)))
    ppo.run_ppo(_ppo(tiny_gpt2, tmp_path / "w", data, dtype="bfloat16", precision="weights", iterations=1))
    assert set(seen) == {"policy_loss", "value_loss", "gae", "kl_penalised_rewards", "masked_whiten"}
    assert all(d == {"torch.float32"} for d in seen.values()), seen


# ---------------------------------------------------------------- bfloat16 within tolerance of float32, per trainer


def _sup(cls, data_path, model, out, **kw):
    base = dict(data=str(data_path), model=str(model), output=str(out), lr=3e-3, batch_size=4, max_steps=3,
                progress=False, log_every=1, tensorboard=False, seed=0)
    if cls is RewardTrainConfig:
        base["normalise_on"] = "none"
    if cls is DPOConfig:
        base["kl_prompts"] = 0
    return cls(**{**base, **kw})


def _ppo(policy, out, data, cls=PPOConfig, **kw):
    base = dict(policy=str(policy), output=str(out), prompts=str(data["prompts"]), reward="rankloop.rl.rewards:length",
                iterations=2, batch_size=8, minibatch_size=4, max_new_tokens=6, learning_rate=3e-3,
                progress=False, tensorboard=False)
    base.update(kw if cls is PPOConfig else {"samples_per_prompt": 2, "batch_size": 4, **kw})
    if cls is PPOConfig:
        base.setdefault("ppo_epochs", 1)
    else:
        base.setdefault("epochs", 1)
    return cls(**base)


def _train(kind, model, out, data, **kw):
    if kind == "train-rm":
        from rankloop.reward.train import train_reward_model
        return train_reward_model(_sup(RewardTrainConfig, data["rank"], model, out, **kw)), "loss"
    if kind == "train-sft":
        from rankloop.sft.train import train_sft
        return train_sft(_sup(SFTConfig, data["sft"], model, out, **kw)), "loss"
    if kind == "train-dpo":
        from rankloop.dpo.train import train_dpo
        return train_dpo(_sup(DPOConfig, data["rank"], model, out, **kw)), "loss"
    if kind == "ppo":
        from rankloop.rl.ppo import run_ppo
        return run_ppo(_ppo(model, out, data, **kw)), "objective/kl_k1"
    from rankloop.rl.rloo import run_rloo
    from rankloop.rl.grpo import run_grpo
    cls, run = (RLOOConfig, run_rloo) if kind == "rloo" else (GRPOConfig, run_grpo)
    return run(_ppo(model, out, data, cls=cls, **kw)), f"{kind}/policy_loss"


@pytest.mark.parametrize("kind", ["train-rm", "train-sft", "train-dpo", "ppo", "rloo", "grpo"])
@pytest.mark.parametrize("precision", ["autocast", "weights"])
def test_bfloat16_run_within_tolerance_of_float32(kind, precision, tmp_path, tiny_gpt2, data):
    out32, key = _train(kind, tiny_gpt2, tmp_path / "fp32", data)
    out16, _ = _train(kind, tiny_gpt2, tmp_path / "bf16", data, dtype="bfloat16", precision=precision)
    a, b = rows(out16), rows(out32)
    assert len(a) == len(b)
    # the first row: the same starting weights, only the arithmetic differs
    first = [k for k in ("loss", "objective/reward", "objective/entropy", key) if k in b[0]]
    for k in first:
        assert math.isfinite(a[0][k]) and close(a[0][k], b[0][k]), (k, a[0][k], b[0][k])
    assert any(a[0][k] != b[0][k] for k in first), "bfloat16 was not applied: the same numbers as float32"
    # the trained weights: bfloat16 rounding of each weight (2^-9 relative) plus a few steps' drift
    from safetensors.torch import load_file

    w32, w16 = load_file(str(out32 / "model.safetensors")), load_file(str(out16 / "model.safetensors"))
    assert w16.keys() == w32.keys()
    expect = "bfloat16" if precision == "weights" else "float32"
    assert {str(v.dtype) for v in w16.values()} == {f"torch.{expect}"}
    start = load_file(str(tiny_gpt2 / "model.safetensors"))
    moved = max((w32[k].float() - start[k].float()).abs().max() for k in w32 if k in start)
    drift = max((w16[k].float() - w32[k].float()).abs().max() for k in w32)
    assert moved > 0 and drift <= 0.25 * moved + 2e-2, (float(drift), float(moved))
