"""DPO on K-way rankings: the policy trained straight from the rankings, no reward model.

The policy's implicit reward h = β log(π_θ(y|x) / π_ref(y|x)) takes the place of a reward model's
score, so this trainer is the reward trainer (``rankloop.reward.train``) with a causal LM's
sequence log-probs for scores: the same readers (every preference format), the same per-ranking
batching (a ranking's K candidates stay together, one forward per candidate, every pair loss from
the K log-probs), the same data order, gradient accumulation, data parallelism, checkpoints and
``--resume`` — the functions are shared, not copied.

Forward pass. A ranking is one packed *tree* (``rankloop.packing.pack_groups``): its prompt once,
then each response as a branch; the log-prob of every response token is read at the position that
predicts it. For K = 4 and a prompt as long as a response, that is 5 prompt-or-response blocks
forwarded instead of TRL's 2 · C(4, 2) = 12 (each pair's prompt twice).

Reference. ``log π_ref(y | x)`` of every training and held-out candidate is computed once, before
the first step, and cached beside the run (``reference_logps.pt``) under a key made of the
reference's weights and the tokenised data: a resumed run reuses it, a changed dataset or
reference recomputes it. Under LoRA the reference is the policy with its adapter off.

Metrics: ``loss``; ``reward/accuracy`` and ``reward/margin`` of the implicit rewards over the
step's pairs; ``logps/chosen`` and ``logps/rejected`` (mean log π_θ of each ranking's best and
worst tie group — a falling chosen log-prob is DPO's known failure mode, Pal et al. 2024); on
``eval_data``: ``eval/pairwise_accuracy``, ``eval/margin``, ``eval/logps_chosen`` beside the
reference's, and ``eval/kl_ref``, KL(π_θ ‖ π_ref) on responses sampled from π_θ for held-out prompts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from rich.console import Console
from torch import nn

from rankloop.config import ConfigError, save_config, weights_dtype
from rankloop.dpo.config import DPOConfig
from rankloop.dpo.loss import best_worst_means, implicit_rewards, preference_loss, sequence_logps, token_logps
from rankloop.io import DataError
from rankloop.models import (apply_lora, backbone_of, count_parameters, enable_gradient_checkpointing, flush_denormals,
                             freeze_bottom,
                             load_causal_lm, load_tokenizer, prefer_cpu_attention, unwrap_model)
from rankloop.ops import head_logprobs
from rankloop.packing import packed_hidden, supports_packing
from rankloop.records import RankedExample, render_prompt
from rankloop.reward.eval import EncodedRanking, ranking_metrics
from rankloop.reward.loss import pair_metrics
from rankloop.reward.train import RankingBatch, RewardData, collate, load_data
from rankloop.runtime import (EpochCache, build_training, full_state_dict, gathered, is_fsdp, open_supervised_run,
                              optimizer_step, plan_steps, progress_bar, save_checkpoint, save_final, split_batch,
                              tracking)

__all__ = ["DPOConfig", "train_dpo"]

REFERENCE_CACHE = "reference_logps.pt"


# ---------------------------------------------------------------- data: prompt and responses apart


@dataclass
class EncodedResponses(EncodedRanking):
    """A ranking tokenised for DPO: ``ids[k]`` = prompt + response k (+ EOS); ``starts[k]`` its first
    response token; ``prompt`` the rendered prompt (for sampling on held-out prompts)."""

    starts: list[int] = field(default_factory=list)
    prompt: str = ""

    def reads(self) -> list[list[int]]:
        """Per candidate, the positions that predict its response tokens (t predicts t + 1)."""
        return [list(range(s - 1, len(x) - 1)) for x, s in zip(self.ids, self.starts)]


def prompt_string(tokenizer, prompt) -> str:
    """The text the policy is prompted with: chat messages through the tokenizer's chat template
    (with the generation prompt) when it has one, else rendered HH-style — as ``rankloop sample``."""
    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return render_prompt(prompt)


def encode_rankings(examples: Sequence[RankedExample], tokenizer, max_length: int) -> list[EncodedResponses]:
    """Prompt and responses tokenised apart (the prompt with the tokenizer's special tokens, each
    response without, then EOS), as the policy produced them: no BPE merge across the boundary.
    Over ``max_length`` the response keeps its start and the prompt its end (as TRL)."""
    prompts = [prompt_string(tokenizer, ex.prompt) for ex in examples]
    p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
    ranked = [ex.texts_in_rank_order() for ex in examples]
    flat = [t for texts, _ in ranked for t in texts]
    r_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    eos = tokenizer.eos_token_id
    out, pos = [], 0
    for ex, prompt, p, (texts, ranks) in zip(examples, prompts, p_ids, ranked):
        if not p:
            raise DataError(ex.source or "data", None, f"prompt {ex.prompt_id!r} encodes to no tokens (the tokenizer "
                            "adds no BOS), so nothing predicts its responses' first tokens: give it some text")
        ids, starts = [], []
        for r in r_ids[pos:pos + len(texts)]:
            r = (list(r) + [eos] if eos is not None and (not r or r[-1] != eos) else list(r))[:max_length - 1]
            head = p[-(max_length - len(r)):]
            ids.append(list(head) + r)
            starts.append(len(head))
        pos += len(texts)
        out.append(EncodedResponses(ids, ranks, ex.margin, starts=starts, prompt=prompt))
    return out


class DPOBatch(NamedTuple):
    """Rankings as one forward batch (``RankingBatch``) and the M response tokens read from it."""

    rank: RankingBatch
    read_row: torch.Tensor | None  # (M,) padded path: the row (= candidate) of each read; packed: None
    read_col: torch.Tensor | None  # (M,) padded path: its column
    targets: torch.Tensor  # (M,) the response token each read position predicts
    owner: torch.Tensor  # (M,) its candidate in the flat order of the batch (0 … N − 1)
    n: int  # N candidates


def dpo_collate(encoded: Sequence[EncodedResponses], idx: list[int], pad_id: int, use_margin: bool,
                pack: dict | None) -> DPOBatch:
    reads = [encoded[i].reads() for i in idx]
    b = collate(encoded, idx, pad_id, use_margin, pack, reads=reads)
    owner, cols, targets, n = [], [], [], 0
    for i, rr in zip(idx, reads):
        for ids, positions in zip(encoded[i].ids, rr):
            owner += [n] * len(positions)
            cols += positions
            targets += [ids[t + 1] for t in positions]
            n += 1
    owner_t = torch.tensor(owner, dtype=torch.long)
    padded = b.packed is None
    return DPOBatch(b, owner_t if padded else None, torch.tensor(cols, dtype=torch.long) if padded else None,
                    torch.tensor(targets, dtype=torch.long), owner_t, n)


# ---------------------------------------------------------------- model: sequence log-probs


class ResponseLogps(nn.Module):
    """``forward(batch) -> (N,)`` log π(y_k | x) of every candidate of a ``DPOBatch``.

    One module around the LM so accelerate/DDP wraps one forward call. The LM head is applied at
    the M read positions only, not at every position of the rows."""

    def __init__(self, lm: nn.Module, logprob_chunk: int = 0):
        super().__init__()
        self.lm = lm
        self.logprob_chunk = logprob_chunk  # > 0: the head in chunks (rankloop.ops.head_logprobs)

    def forward(self, batch: DPOBatch) -> torch.Tensor:
        device = next(self.lm.parameters()).device
        backbone = backbone_of(self.lm)
        r = batch.rank
        if r.packed is not None:
            h = packed_hidden(backbone, r.packed.to(device), use_cache=False)  # (M, H)
        else:
            hidden = backbone(input_ids=r.input_ids.to(device), attention_mask=r.attention_mask.to(device),
                              use_cache=False).last_hidden_state  # (N, T, H)
            h = hidden[batch.read_row.to(device), batch.read_col.to(device)]  # (M, H)
        head = unwrap_model(self.lm).get_output_embeddings()
        if self.logprob_chunk:
            logp = head_logprobs(h, head, batch.targets.to(device), self.logprob_chunk)[0]  # (M,)
        else:
            logp = token_logps(head(h), batch.targets.to(device))  # (M, V) logits → (M,)
        return sequence_logps(logp, batch.owner.to(device), batch.n)


def as_ranking_matrix(flat: torch.Tensor, b: RankingBatch) -> torch.Tensor:
    """(N,) per candidate → (B, K) in the batch's ranking layout (padding slots: candidate 0's value)."""
    return flat[b.index.to(flat.device)]


def pack_settings(cfg: DPOConfig, lm: nn.Module) -> dict | None:
    """``pack_rankings`` keyword arguments, or None to pad (the attention takes no 4D mask)."""
    base = unwrap_model(lm)
    if cfg.pack and supports_packing(base):
        return {"causal": True, "share_prefix": cfg.share_prefix,
                "hidden_size": int(getattr(base.config, "hidden_size", None) or base.config.n_embd)}
    return None


def build_policy(cfg: DPOConfig, tokenizer, weights_from: str | None = None) -> nn.Module:
    """The causal LM to train, dropout off, frozen / LoRA-wrapped as configured."""
    torch.manual_seed(cfg.seed)
    lm = load_causal_lm(weights_from or cfg.model, dtype=weights_dtype(cfg.dtype, cfg.precision), tokenizer=tokenizer)
    prefer_cpu_attention(lm, "cuda" if torch.cuda.is_available() else "cpu")
    if cfg.disable_dropout:
        _no_dropout(lm)
    if cfg.freeze_layers:
        freeze_bottom(lm, cfg.freeze_layers)
    if cfg.lora:
        targets = None  # peft's "all-linear"
        if cfg.freeze_layers:  # no adapters on frozen blocks: they must stay exactly as loaded
            targets = [n for n, m in lm.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad
                       and m is not lm.get_output_embeddings()]
        lm = apply_lora(lm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, task="causal",
                        target_modules=targets)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    return lm


def _no_dropout(lm: nn.Module) -> None:
    for m in lm.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


# ---------------------------------------------------------------- the reference


class Reference:
    """π_ref: a frozen model of its own, or the LoRA policy with its adapter off (no second copy)."""

    def __init__(self, lm: nn.Module, shares_policy: bool):
        self.lm, self.shares_policy = lm, shares_policy
        self.fingerprint = weights_fingerprint(lm)

    def mode(self):
        return self.lm.disable_adapter() if self.shares_policy else contextlib.nullcontext()


def weights_fingerprint(lm: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, bytes); for a peft model, of its base
    weights alone under their plain names, so the LoRA policy's reference hashes as the model it loaded."""
    h = hashlib.sha256()
    for name, t in sorted(lm.state_dict().items()):
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_reference(cfg: DPOConfig, policy: nn.Module, tokenizer) -> Reference:
    if cfg.lora and cfg.reference is None:
        return Reference(policy, shares_policy=True)
    source = cfg.reference or cfg.model
    if source != cfg.model:
        check_same_tokenizer(source, cfg.model, tokenizer)
    lm = load_causal_lm(source, dtype=weights_dtype(cfg.dtype, cfg.precision), tokenizer=tokenizer)
    prefer_cpu_attention(lm, "cuda" if torch.cuda.is_available() else "cpu")
    _no_dropout(lm)
    lm.eval().requires_grad_(False)
    return Reference(lm, shares_policy=False)


def check_same_tokenizer(reference: str, policy: str, tokenizer) -> None:
    """DPO compares the two models' log-probs of the same token ids: they must share one vocabulary."""
    ref_tok = load_tokenizer(reference)
    a, b = tokenizer.get_vocab(), ref_tok.get_vocab()
    if a != b or (tokenizer.eos_token_id, tokenizer.bos_token_id) != (ref_tok.eos_token_id, ref_tok.bos_token_id):
        diff = sorted(set(a.items()) ^ set(b.items()))[:3]
        raise ConfigError(f"reference {reference} has another tokenizer than the policy {policy} "
                          f"({len(b)} vs {len(a)} tokens; first differences {diff}): DPO compares log-probs of "
                          "the same token ids, so the reference must use the policy's tokenizer")


@torch.no_grad()
def dataset_logps(module: ResponseLogps, encoded: Sequence[EncodedResponses], pad_id: int, pack: dict | None,
                  batch_size: int) -> list[torch.Tensor]:
    """``log π(y_k | x)`` of every candidate of every ranking, ``[(K_r,)]`` in ``encoded`` order, on CPU
    (rankings grouped by length, ``batch_size`` per forward)."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].max_len)
    out: list[torch.Tensor | None] = [None] * len(encoded)
    was = module.training
    module.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        b = dpo_collate(encoded, idx, pad_id, False, pack)
        flat = module(b).float().cpu()
        pos = 0
        for i in idx:
            out[i] = flat[pos:pos + len(encoded[i].ids)].clone()
            pos += len(encoded[i].ids)
    module.train(was)
    return out  # type: ignore[return-value]


def data_fingerprint(encoded: Sequence[EncodedResponses] | None) -> str:
    h = hashlib.sha256()
    for e in encoded or []:
        h.update(repr((e.ids, e.starts)).encode())
    return h.hexdigest()


class ReferenceLogps(NamedTuple):
    train: list[torch.Tensor]
    eval: list[torch.Tensor] | None

    def batch(self, idx: list[int], b: RankingBatch, split: str = "train") -> torch.Tensor:
        """(B, K) in the batch's layout (padding slots 0)."""
        rows = self.train if split == "train" else self.eval
        out = torch.zeros(b.mask.shape, dtype=torch.float32)
        for j, i in enumerate(idx):
            out[j, :len(rows[i])] = rows[i]
        return out


def reference_logps(acc, ref: Reference, data: RewardData, cfg: DPOConfig, pack: dict | None,
                    console: Console) -> ReferenceLogps:
    """Cached ``log π_ref`` of the training and held-out candidates: read from ``output/reference_logps.pt``
    when its key (reference weights, tokenised data) matches, else computed (main process) and written."""
    path = Path(cfg.output) / REFERENCE_CACHE
    key = hashlib.sha256("|".join([ref.fingerprint, data_fingerprint(data.train),
                                   data_fingerprint(data.eval_set)]).encode()).hexdigest()
    if acc.is_main_process:
        cached = torch.load(path, weights_only=False) if path.exists() else None
        if cached is not None and cached.get("key") == key:
            console.print(f"reference log-probs: reusing {path}")
        else:
            if cached is not None:
                console.print(f"reference log-probs: {path} is for another dataset or reference; recomputing")
            t0 = time.perf_counter()
            pad = data.tokenizer.pad_token_id
            with ref.mode():
                module = ResponseLogps(ref.lm, cfg.logprob_chunk)  # (no-grad: chunked, nothing recomputed)
                train = dataset_logps(module, data.train, pad, pack, cfg.eval_batch_size)
                held = dataset_logps(module, data.eval_set, pad, pack, cfg.eval_batch_size) if data.eval_set else None
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"key": key, "train": train, "eval": held}, tmp)
            tmp.replace(path)
            console.print(f"reference log-probs of {sum(len(x) for x in train)} candidates in "
                          f"{time.perf_counter() - t0:.1f}s, cached in {path}")
    acc.wait_for_everyone()
    cached = torch.load(path, weights_only=False)
    for rows in (cached["train"], cached["eval"] or []):
        if not all(torch.isfinite(r).all() for r in rows):
            raise FloatingPointError(f"non-finite reference log-probs in {path}: check the reference model")
    return ReferenceLogps(cached["train"], cached["eval"])


# ---------------------------------------------------------------- 4. one micro-batch, evaluation


class DPOSums(NamedTuple):
    """Sums over logged micro-batches (and processes), one (7,) tensor in this order."""

    loss: float  # Σ per-ranking loss
    rankings: float
    correct: float  # pairs whose implicit rewards order them right
    margin: float  # Σ h_w − h_l over pairs
    pairs: float
    chosen: float  # Σ over rankings of the mean log π_θ of the best tie group
    rejected: float  # … of the worst


def micro_step(policy, acc, data: RewardData, ref: ReferenceLogps, idx: list[int], n_global: int, cfg: DPOConfig,
               pack: dict | None) -> torch.Tensor:
    """Forward the rankings ``idx`` (each a packed tree: prompt once, K responses as branches), take
    the DPO loss from their K log-probs against the cached reference's, and backward
    ``Σ per-ranking loss · num_processes / n_global`` (as ``rankloop.reward.train.micro_step``).
    Returns the (7,) ``DPOSums``."""
    device = acc.device
    b = dpo_collate(data.train, idx, data.tokenizer.pad_token_id, cfg.use_margin, pack)
    r = b.rank
    logp = as_ranking_matrix(policy(b), r)  # (B, K) log π_θ(y_k | x)
    ref_logp = ref.batch(idx, r).to(device)  # (B, K) log π_ref(y_k | x)
    ranks, mask = r.ranks.to(device), r.mask.to(device)
    margin = r.margin.to(device) if r.margin is not None else None
    per = preference_loss(cfg.loss, logp, ref_logp, ranks, mask, cfg.beta, margin, cfg.label_smoothing)  # (B,)
    acc.backward(per.sum() * acc.num_processes / n_global)
    pm = pair_metrics(implicit_rewards(logp.detach(), ref_logp, cfg.beta), ranks, mask)
    chosen, rejected = best_worst_means(logp.detach(), ranks, mask)
    return torch.stack([per.detach().sum(), torch.tensor(float(len(idx)), device=device), pm["correct"],
                        pm["margin"], pm["pairs"], chosen, rejected])


@torch.no_grad()
def held_out_kl(lm: nn.Module, ref: Reference, tokenizer, prompts: list[str], cfg: DPOConfig) -> float:
    """KL(π_θ ‖ π_ref) per response on held-out prompts: one response sampled from π_θ per prompt, then
    Σ_t KL(π_θ(·|s_t) ‖ π_ref(·|s_t)) over its tokens, exact at each position; mean over prompts."""
    from rankloop.rl.rollout import lm_response_logits
    from rankloop.sampling import generate

    was = lm.training
    lm.eval()
    sample = generate(lm, tokenizer, prompts, k=1, max_new_tokens=cfg.kl_max_new_tokens, temperature=1.0,
                      seed=cfg.seed)
    device = next(lm.parameters()).device
    ids, am, p_len = sample.input_ids.to(device), sample.attention_mask.to(device), sample.prompt_ids.shape[1]
    logq = torch.log_softmax(lm_response_logits(lm, ids, am, p_len).float(), -1)  # (B, R, V)
    with ref.mode():
        logr = torch.log_softmax(lm_response_logits(ref.lm, ids, am, p_len).float(), -1)
    lm.train(was)
    kl = (logq.exp() * (logq - logr)).sum(-1) * sample.response_mask.to(device)  # (B, R)
    return float(kl.sum(1).mean())


def evaluate(acc, policy: ResponseLogps, ref: Reference | None, ref_logps: ReferenceLogps, data: RewardData,
             cfg: DPOConfig, pack: dict | None, step: int) -> dict | None:
    """Implicit-reward ranking metrics, chosen/rejected log-probs and the KL on held-out prompts (main
    process; under FSDP every process, inside ``gathered``: a forward pass of the sharded policy is
    collective, so each computes the same row and the main one logs it), logged as ``eval/*`` rows."""
    if data.eval_set is None:
        return None
    m = None
    if acc.is_main_process or is_fsdp(acc):
        # The unwrapped policy and the reference: autocast as in training; under FSDP the policy's
        # weights whole for the block (the forward passes and the KL's decode loop call the LM directly).
        with acc.autocast(), gathered(acc, policy):
            m = _evaluate_all(acc, policy, ref, ref_logps, data, cfg, pack, step)
    acc.wait_for_everyone()
    return m


def _evaluate_all(acc, policy, ref, ref_logps: ReferenceLogps, data: RewardData, cfg: DPOConfig, pack, step: int):
    """evaluate's work (the main process, or every process under FSDP): the metrics row, logged by the
    main process and returned."""
    lm = acc.unwrap_model(policy).lm
    logp = dataset_logps(ResponseLogps(lm, cfg.logprob_chunk), data.eval_set, data.tokenizer.pad_token_id, pack,
                         cfg.eval_batch_size)
    h = [(cfg.beta * (a - r)).tolist() for a, r in zip(logp, ref_logps.eval)]
    m = ranking_metrics(h, [e.ranks for e in data.eval_set])
    mean_of = lambda rows, pick: sum(sum(v for v, k in zip(x.tolist(), e.ranks) if k == pick(e.ranks))
                                     / e.ranks.count(pick(e.ranks)) for x, e in zip(rows, data.eval_set)) / len(rows)
    m.update({"logps_chosen": mean_of(logp, min), "logps_rejected": mean_of(logp, max),
              "logps_chosen_ref": mean_of(ref_logps.eval, min), "logps_rejected_ref": mean_of(ref_logps.eval, max)})
    prompts = list(dict.fromkeys(e.prompt for e in data.eval_set))[: cfg.kl_prompts]
    if prompts and ref is not None:
        m["kl_ref"] = held_out_kl(lm, ref, data.tokenizer, prompts, cfg)
    row = {"step": step, "eval/pairwise_accuracy": m["pairwise_accuracy"], "eval/margin": m["mean_margin"],
           "eval/exact_ranking_accuracy": m["exact_ranking_accuracy"], "eval/logps_chosen": m["logps_chosen"],
           "eval/logps_chosen_ref": m["logps_chosen_ref"], "eval/logps_rejected": m["logps_rejected"]}
    if "kl_ref" in m:
        row["eval/kl_ref"] = m["kl_ref"]
    if acc.is_main_process:
        acc.log(row, step=step)
    return m


# ---------------------------------------------------------------- the loop


def train_dpo(cfg: DPOConfig) -> Path:
    """Train the policy on the rankings with DPO; returns the output directory (the final policy loads
    with ``from_pretrained``, LoRA merged)."""
    # FSDP-ready: the policy is sharded; the reference (frozen) is replicated, its log-probs cached
    # before the policy is prepared; evaluation runs on every process; saves gather the shards.
    acc, console, run, guard = open_supervised_run(cfg, fsdp=True)
    main = acc.is_main_process

    # 1. Set-up: where to start ---------------------------------------------------------------
    resume_from = run.resume_point(cfg.resume, console)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 2. Data: read (every train-rm format), leave out all-tied rankings, tokenise, cut into steps
    data = load_data(cfg, console, encode=encode_rankings)
    plan = plan_steps(cfg, [e.max_len for e in data.train], acc.num_processes, "rankings")

    # 3. Policy, AdamW, schedule (restored on --resume); the reference and its cached log-probs -
    model, optimizer, scheduler, start = build_training(cfg, data.tokenizer, plan, resume_from, console, build_policy)
    model.to(acc.device)
    pack = pack_settings(cfg, model)
    ref = load_reference(cfg, model, data.tokenizer)
    ref.lm.to(acc.device)
    t_ref = time.perf_counter()
    with acc.autocast():  # the unprepared reference: autocast as the policy's forward (no-op in float32)
        ref_logps = reference_logps(acc, ref, data, cfg, pack, console)
    ref_seconds = time.perf_counter() - t_ref
    if not ref.shares_policy and (data.eval_set is None or cfg.kl_prompts == 0):
        ref = None  # its log-probs are cached: the copy is needed again only for the held-out KL
    policy, optimizer = acc.prepare(ResponseLogps(model, cfg.logprob_chunk), optimizer)
    guard.last_good = resume_from
    run.begin(resumed_at=start)
    if main:
        save_config(cfg, run.out / "train_config.json")
    trainable, total = count_parameters(model)
    console.print(
        f"train-dpo: {len(data.train)} rankings ({sum(len(e.ids) for e in data.train)} candidates), "
        f"{plan.total_steps} steps of {plan.global_batch} rankings on {acc.num_processes} process(es); "
        f"loss {cfg.loss}, beta {cfg.beta}; {trainable:,} of {total:,} parameters trainable"
    )

    # 4. Train: one optimizer step per global batch ---------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    policy.train()
    batches = EpochCache(cfg, plan, acc.num_processes)
    sums = torch.zeros(7, device=acc.device)  # DPOSums since the last log
    t_log = t_train = time.perf_counter()
    bar = progress_bar("train-dpo", enabled=main and cfg.progress, console=console)
    with tracking(acc), bar, flush_denormals():
        task = bar.add_task("train", total=plan.total_steps, completed=start, info="")
        for step in range(start, plan.total_steps):
            # 4a. This step's global batch: a function of (seed, epoch, step) only.
            batch = batches.of(step)
            parts = split_batch(batch, acc.num_processes * cfg.grad_accum)
            # 4b. Each ranking's tree forward, the DPO loss from its K log-probs, backward.
            # 4c. Update.
            mine = [parts[m * acc.num_processes + acc.process_index] for m in range(cfg.grad_accum)]
            grad_norm = optimizer_step(
                acc, policy, [functools.partial(micro_step, policy, acc, data, ref_logps, idx, len(batch), cfg, pack)
                              for idx in mine],
                sums, optimizer, scheduler, params, cfg.max_grad_norm, guard, step)
            done = step + 1
            # 4d. Log, evaluate, checkpoint.
            if done % cfg.log_every == 0 or done == plan.total_steps:
                s = DPOSums(*acc.reduce(sums.clone(), reduction="sum").tolist())
                row = {
                    "step": done, "epoch": round(done / plan.steps_per_epoch, 4),
                    "loss": s.loss / max(s.rankings, 1), "reward/accuracy": s.correct / max(s.pairs, 1),
                    "reward/margin": s.margin / max(s.pairs, 1), "logps/chosen": s.chosen / max(s.rankings, 1),
                    "logps/rejected": s.rejected / max(s.rankings, 1), "lr": scheduler.get_last_lr()[0],
                    "steps_per_s": cfg.log_every / max(time.perf_counter() - t_log, 1e-9),
                }
                if cfg.max_grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                acc.log(row, step=done)
                bar.update(task, info=f"loss {row['loss']:.4f} acc {row['reward/accuracy']:.3f}")
                sums.zero_()
                t_log = time.perf_counter()
            if cfg.eval_every and done % cfg.eval_every == 0 and done != plan.total_steps:
                evaluate(acc, policy, ref, ref_logps, data, cfg, pack, done)
            if cfg.save_every and done % cfg.save_every == 0 and done != plan.total_steps:
                guard.last_good = save_checkpoint(run, model, optimizer, scheduler, data.tokenizer, cfg, done, guard)
            bar.update(task, completed=done)
        train_seconds = time.perf_counter() - t_train

        # 5. Final evaluation, save -----------------------------------------------------------------
        final_eval = evaluate(acc, policy, ref, ref_logps, data, cfg, pack, plan.total_steps)
    weights = full_state_dict(acc, model) if is_fsdp(acc) else None  # FSDP: gathered by every process
    if main:
        summary = {"steps": plan.total_steps, "rankings": len(data.train), "skipped": data.skipped,
                   "tied_only": data.tied_only, "trainable_parameters": trainable, "parameters": total,
                   "resumed_at": start, "train_loop_seconds": round(train_seconds, 3),
                   "reference_seconds": round(ref_seconds, 3)}
        if final_eval is not None:
            summary["eval"] = {k: v for k, v in final_eval.items() if k != "scores"}
            _report_eval(console, final_eval, len(data.eval_set))
        save_final(model, data.tokenizer, run.out, {"train_config.json": cfg, "train_summary.json": summary},
                   state_dict=weights)
        console.print(f"saved the policy to {run.out}")
    acc.wait_for_everyone()
    return run.out


def _report_eval(console: Console, m: dict, n: int) -> None:
    console.print(f"eval: implicit-reward pairwise accuracy {m['pairwise_accuracy']:.4f}, margin {m['mean_margin']:.4f} "
                  f"on {n} rankings" + (f"; KL to the reference {m['kl_ref']:.4f} per response" if "kl_ref" in m else ""))
    drop = m["logps_chosen"] - m["logps_chosen_ref"]
    note = " — falling: DPO lowers the chosen responses too, only the rejected faster" if drop < 0 else ""
    console.print(f"eval: log-prob of the chosen responses {m['logps_chosen_ref']:.3f} (reference) → "
                  f"{m['logps_chosen']:.3f} (policy){note}")
