"""Training: smoke tests of the CLIs on tiny models, and the invariants of issue 2 item 7."""

import json
import os
import signal
import subprocess
import sys
import time
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from rankloop.io import read_preferences
from rankloop.models import load_sequence_scorer, load_tokenizer
from rankloop.reward.eval import encode_examples
from rankloop.reward.loss import bradley_terry_loss
from rankloop.reward.model import ScoreModule, sequence_scores
from rankloop.reward.train import RewardTrainConfig, collate, micro_step, train_reward_model
from rankloop.runtime import epoch_batches, split_batch

from .conftest import ROOT, max_diff, moved, run_cli, weights


def _cfg(data, model, out, **kw):
    base = dict(data=str(data), model=str(model), output=str(out), lr=3e-3, batch_size=4, progress=False,
                normalise_on="none", log_every=1)
    return RewardTrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- smoke tests of the CLIs


def test_train_rm_and_eval_rm_cli(tmp_path, tiny_gpt2, rank_data):
    out = tmp_path / "rm"
    run_cli("train-rm", "--data", rank_data["train"], "--model", tiny_gpt2, "--output", out,
            "--eval-data", rank_data["eval"], "--epochs", "2", "--batch-size", "8", "--lr", "3e-3",
            "--save-every", "5", "--no-progress")
    before, after = weights(tiny_gpt2), weights(out)
    moved = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert moved, "no parameter moved"
    assert "score.weight" in after
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(out)  # the output loads as a plain HF model
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "model.safetensors").exists() for c in ckpts)
    AutoModelForSequenceClassification.from_pretrained(ckpts[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"reward/accuracy", "reward/margin", "loss", "lr"} <= set(train_rows[0])
    assert train_rows[-1]["reward/accuracy"] > 0.6
    norm = json.loads((out / "reward_normalisation.json").read_text())
    assert norm["scale"] > 0 and norm["reference"] == "train"

    report = tmp_path / "eval.json"
    proc = run_cli("eval-rm", "--model", out, "--data", rank_data["eval"], "--output", report)
    m = json.loads(report.read_text())
    assert json.loads(proc.stdout)["pairwise_accuracy"] == m["pairwise_accuracy"]
    assert m["pairwise_accuracy"] > 0.6, m  # learnable rule, held-out prompts
    assert {"exact_ranking_accuracy", "kendall_tau", "mean_margin", "scores"} <= set(m)
    # The stored normalisation makes the training set mean 0, std 1.
    from rankloop.reward.eval import evaluate_reward_model

    on_train = evaluate_reward_model(out, rank_data["train"])
    assert abs(on_train["scores"]["mean"]) < 1e-4 and on_train["scores"]["std"] == pytest.approx(1, abs=1e-3)


def test_train_rm_lora_freeze_pl_from_yaml(tmp_path, tiny_llama, rank_data):
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(f"data: {rank_data['train']}\nmodel: {tiny_llama}\nloss: pl\nlora: true\nlora_r: 4\n"
                   "freeze_layers: 1\nmax_steps: 6\nbatch_size: 4\nlr: 0.01\n")
    out = tmp_path / "rm"
    run_cli("train-rm", "--config", cfg, "--output", out, "--no-progress")
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["loss"] == "pl" and saved["lora"] is True and saved["max_steps"] == 6
    model = load_sequence_scorer(out)  # merged LoRA: a plain model, no peft needed to load it
    assert not any("lora" in n for n, _ in model.named_parameters())
    before, after = weights(tiny_llama), weights(out)
    # Layer 0's own weights are frozen; layer 1 moved through the merged LoRA update.
    assert torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(before["model.layers.1.self_attn.q_proj.weight"], after["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_encoder_backbone_trains(tmp_path, tiny_bert, rank_data):
    out = train_reward_model(_cfg(rank_data["train"], tiny_bert, tmp_path / "rm", max_steps=4, freeze_layers=1))
    before, after = weights(tiny_bert), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in after if k in before and "classifier" in k)
    assert torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                       after["bert.encoder.layer.0.attention.self.query.weight"])


# ---------------------------------------------------------------- invariants


def test_all_pairs_batch_equals_expanded_pairs_one_by_one(tiny_gpt2, rank_data):
    """One forward per candidate + all C(K,2) pair losses ≡ every pair forwarded on its own."""
    tok = load_tokenizer(tiny_gpt2)
    enc = encode_examples(read_preferences(rank_data["train"])[:3], tok, 64)

    def fresh():
        torch.manual_seed(0)
        return load_sequence_scorer(tiny_gpt2, tokenizer=tok)

    model = fresh()
    b = collate(enc, [0, 1, 2], tok.pad_token_id)
    s = ScoreModule(model)(b.input_ids, b.attention_mask)[b.index]  # (B, K)
    loss_k = bradley_terry_loss(s, b.ranks, b.mask).mean()
    loss_k.backward()
    grads_k = {n: p.grad.clone() for n, p in model.named_parameters()}

    model2 = fresh()
    per_ranking = []
    for e in enc:
        pair_losses = []
        for i, j in combinations(range(len(e.ids)), 2):
            if e.ranks[i] == e.ranks[j]:
                continue
            w, lo = (i, j) if e.ranks[i] < e.ranks[j] else (j, i)
            one = lambda ids: sequence_scores(model2, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
            pair_losses.append(-F.logsigmoid(one(e.ids[w]) - one(e.ids[lo])).squeeze())
        per_ranking.append(torch.stack(pair_losses).mean())
    loss_p = torch.stack(per_ranking).mean()
    loss_p.backward()
    assert loss_k.item() == pytest.approx(loss_p.item(), abs=1e-5)
    for n, p in model2.named_parameters():
        assert torch.allclose(grads_k[n], p.grad, atol=1e-5), n


def test_identical_texts_train_as_their_comparisons(tiny_gpt2):
    """A ranking that puts one text at two places: the trainer's loss is the mean over exactly the pairs
    ``comparisons()`` exports (the copies make none), whichever loss layout reads it."""
    from accelerate import Accelerator

    from rankloop.records import CandidateText, RankedExample, Ranking

    tok = load_tokenizer(tiny_gpt2)
    texts = [" the cat sat.", " a dog ran in the park.", " the cat sat.", " good morning!"]
    ex = RankedExample(prompt_id="p", prompt="tell me.", ranking=Ranking(prompt_id="p", order=["0", "1", "2", "3"]),
                       candidates=[CandidateText(id=str(i), text=x) for i, x in enumerate(texts)])
    enc = encode_examples([ex], tok, 64)
    torch.manual_seed(0)
    model = load_sequence_scorer(tiny_gpt2, tokenizer=tok)
    sums = micro_step(ScoreModule(model), Accelerator(cpu=True), enc, [0], 1, "bt", tok.pad_token_id)
    with torch.no_grad():
        one = lambda x: sequence_scores(model, *[t[None] for t in (torch.tensor(x), torch.ones(len(x), dtype=torch.long))])
        score = {x: one(enc[0].ids[texts.index(x)]) for x in set(texts)}
        pairs = ex.comparisons()
        want = torch.stack([-F.logsigmoid(score[c.chosen] - score[c.rejected]) for c in pairs]).mean()
    assert len(pairs) == 5  # C(4, 2) = 6 less the copies' pair
    assert sums[0].item() == pytest.approx(want.item(), abs=1e-5) and sums[4].item() == 5


def test_packed_training_equals_padded_training(tmp_path, tiny_gpt2, rank_data):
    """train-rm with packed rows and the shared prefix (default) follows padded training: the same step losses
    and the same weights up to float rounding (which Adam amplifies on near-zero gradients, so the
    weights are compared against how far they moved)."""
    tok = load_tokenizer(tiny_gpt2)
    enc = encode_examples(read_preferences(rank_data["train"]), tok, 64)
    packed = collate(enc, list(range(4)), tok.pad_token_id,
                     pack={"causal": True, "share_prefix": True, "hidden_size": 32}).packed
    assert packed is not None  # these batches do take the packed path
    runs, losses = {}, {}
    for share in (True, False):
        out = train_reward_model(_cfg(rank_data["train"], tiny_gpt2, tmp_path / f"share-{share}", max_steps=5,
                                      pack=share, lr=1e-3))
        runs[share] = weights(out)
        losses[share] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
                         if "loss" in json.loads(x)]
    assert len(losses[True]) == 5 and losses[True] == pytest.approx(losses[False], abs=1e-5)
    step = moved(weights(tiny_gpt2), runs[True])
    assert step > 1e-3 and max_diff(runs[True], runs[False]) < 0.05 * step  # measured 1.5 %


def test_gradient_accumulation_equals_bigger_batch(tmp_path, tiny_gpt2, rank_data):
    # The gradient of one step: 4 micro-batches of 2 rankings ≡ one batch of 8.
    from accelerate import Accelerator

    tok = load_tokenizer(tiny_gpt2)
    enc = encode_examples(read_preferences(rank_data["train"]), tok, 64)
    acc = Accelerator(cpu=True)
    batch = list(range(8))
    grads = []
    for parts in ([batch], split_batch(batch, 4)):
        model = load_sequence_scorer(tiny_gpt2, tokenizer=tok)
        torch.manual_seed(0)
        model.score.reset_parameters()
        sums = sum(micro_step(ScoreModule(model), acc, enc, p, len(batch), "bt", tok.pad_token_id) for p in parts)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert sums[1].item() == 8
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n

    # End to end through train-rm. Adam divides by √v, so the first update is ≈ lr·sign(g) and a
    # float-rounding difference in a near-zero gradient shows up as up to ~lr/10 in that weight:
    # the weights agree to 1e-3 · lr-scale, not bit for bit.
    big = train_reward_model(_cfg(rank_data["train"], tiny_gpt2, tmp_path / "big", max_steps=3, batch_size=8))
    accum = train_reward_model(_cfg(rank_data["train"], tiny_gpt2, tmp_path / "acc", max_steps=3, batch_size=2, grad_accum=4))
    assert max_diff(weights(big), weights(accum)) < 3e-4
    assert moved(weights(tiny_gpt2), weights(big)) > 5e-3
    big_log = [json.loads(x) for x in (big / "metrics.jsonl").read_text().splitlines()]
    acc_log = [json.loads(x) for x in (accum / "metrics.jsonl").read_text().splitlines()]
    assert big_log[0]["loss"] == pytest.approx(acc_log[0]["loss"], abs=1e-6)
    assert big_log[0]["grad_norm"] == pytest.approx(acc_log[0]["grad_norm"], rel=1e-5)


def test_data_order_is_a_pure_function_and_splits_cover_the_batch():
    lengths = [5, 100, 9, 300, 7, 2, 80, 4, 60, 10, 3, 3]
    a = epoch_batches(lengths, 3, 7, 4, True, 4)
    assert a == epoch_batches(lengths, 3, 7, 4, True, 4) != epoch_batches(lengths, 4, 7, 4, True, 4)
    assert sorted(i for b in a for i in b) == list(range(12)) and all(len(b) == 4 for b in a)
    assert len(epoch_batches(lengths[:10], 3, 7, 4, True, 4)) == 2  # a last batch of 2 < min_size 4 is dropped
    assert len(epoch_batches(lengths[:10], 3, 7, 4, True, 1)) == 3
    assert split_batch([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4, 5]]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_gpt2, rank_data):
    # 40 steps; killed as soon as step 8's checkpoint appears (the remaining 32 steps take far longer
    # than the 20 ms poll), so the kill lands mid-run, possibly mid-checkpoint.
    args = dict(max_steps=40, save_every=4, batch_size=4)
    ref = train_reward_model(_cfg(rank_data["train"], tiny_gpt2, tmp_path / "ref", **args))

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rankloop.cli", "train-rm", "--data", str(rank_data["train"]), "--model", str(tiny_gpt2),
           "--output", str(out), "--lr", "3e-3", "--batch-size", "4", "--max-steps", "40", "--save-every", "4",
           "--normalise-on", "none", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-00000008").exists():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    load_sequence_scorer(last)  # the last complete checkpoint is intact and loadable

    run_cli("train-rm", *cmd[4:], "--resume")
    assert max_diff(weights(ref), weights(out)) < 1e-6
    assert not list((out / "checkpoints").glob(".tmp-*"))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40 and len(steps) == len(set(steps))


@pytest.mark.slow
def test_two_processes_data_parallel_equal_one(tmp_path, tiny_gpt2, rank_data):
    cfg = tmp_path / "log.yaml"
    cfg.write_text("log_every: 1\n")
    common = ["--data", rank_data["train"], "--model", tiny_gpt2, "--lr", "3e-3", "--max-steps", "4",
              "--normalise-on", "none", "--no-progress", "--config", cfg]
    one = tmp_path / "one"
    run_cli("train-rm", *common, "--output", one, "--batch-size", "4")
    two = tmp_path / "two"
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "rankloop.cli", "train-rm", *map(str, common), "--output", str(two), "--batch-size", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stderr
    # Same global batches and loss normaliser; only the all-reduce's summation order differs: the
    # loss and the all-reduced gradient norm agree to float precision, the weights to Adam's
    # amplification of that rounding (see the gradient-accumulation test).
    log1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(log1, log2):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["reward/accuracy"] == b["reward/accuracy"]
    assert log1[0]["grad_norm"] == pytest.approx(log2[0]["grad_norm"], rel=1e-5)
    assert max_diff(weights(one), weights(two)) < 3e-4
    assert moved(weights(tiny_gpt2), weights(one)) > 1e-3
