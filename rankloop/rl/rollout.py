"""The policy with its value head, the reference, and the teacher-forced forward passes of a rollout.

``PolicyWithValue`` is one ``nn.Module`` (so accelerate/DDP wraps it whole): the causal LM and a
value head — a linear layer on the backbone's last hidden state (``critic = "shared"``), or on a
separate copy of the backbone (``critic = "separate"``). Its forward returns, for the response
positions only, the temperature-scaled logits that predicted each response token and V(s_t).

The reference is a frozen copy of the original model, or — under LoRA — the same weights with the
adapter switched off (peft's ``disable_adapter()``), so no second copy sits in memory.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from rankloop.packing import pack_padded, packed_hidden, supports_packing, worth_packing
from rankloop.ops import entropy_from_logits, head_logprobs, logprobs_from_logits
from rankloop.models import backbone_of, hidden_size, unwrap_model
from rankloop.sampling import positions


def response_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    prompt_len: int, pack: bool = True) -> torch.Tensor:
    """Last hidden states at the positions that predict the response tokens.

    input_ids/attention_mask (B, P + R) → (B, R, H): position P − 1 + t predicts response token t.
    The last token predicts nothing and, being last, is attended to by no other position, so it is
    left out of the forward pass (exact under causal attention; one position fewer to compute).
    With ``pack`` (and an attention that takes a 4D mask) the rows' real tokens — the prompt
    without its left padding, the response up to its stop — are packed end to end
    (``rankloop.packing``) when that saves at least 10 % of the positions: the same states,
    without computing the padding.
    """
    ids, am = input_ids[:, :-1], attention_mask[:, :-1]
    if pack and supports_packing(backbone) and worth_packing(int(am.sum()), am.numel()):  # real tokens: the floor
        batch = pack_padded(ids, am, prompt_len - 1, hidden_size(backbone))
        if worth_packing(batch.input_ids.numel(), am.numel()):
            return packed_hidden(backbone, batch.to(ids.device), use_cache=False)  # (B, R, H)
    out = backbone(input_ids=ids, attention_mask=am, position_ids=positions(attention_mask)[:, :-1], use_cache=False)
    return out.last_hidden_state[:, prompt_len - 1:]


def lm_response_logits(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                       temperature: float = 1.0, pack: bool = True) -> torch.Tensor:
    """(B, P + R) → (B, R, V) logits / temperature at the response positions."""
    h = response_hidden(backbone_of(lm), input_ids, attention_mask, prompt_len, pack)
    logits = unwrap_model(lm).get_output_embeddings()(h)
    return logits / temperature if temperature != 1.0 else logits


class PolicyWithValue(nn.Module):
    def __init__(self, lm: nn.Module, critic: nn.Module | None = None, value_head_std: float = 0.0,
                 pack: bool = True, value_head: bool = True):
        super().__init__()
        self.lm = lm
        self.pack = pack  # teacher-forced passes on packed rows (see response_hidden)
        self.critic = critic  # a separate backbone for V, or None to share the policy's
        # The critic-free learners (RLOO, GRPO) have no value head: their values are None.
        self.value_head = nn.Linear(hidden_size(lm), 1) if value_head else None
        if value_head:
            nn.init.normal_(self.value_head.weight, std=value_head_std) if value_head_std > 0 else nn.init.zeros_(
                self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                temperature: float = 1.0, response_ids: torch.Tensor | None = None, logprob_chunk: int = 0,
                entropy: bool = False):
        """(B, P + R) → logits (B, R, V) (temperature-scaled), values (B, R) (None without a value head).

        Given ``response_ids`` (B, R) it returns ((log-probs, entropy or None), values) instead: the
        head, log-softmax and gather ``logprob_chunk`` tokens at a time (``rankloop.ops.head_logprobs``),
        so the update never holds the whole (B, R, V) logits, in the forward or the backward."""
        h = response_hidden(backbone_of(self.lm), input_ids, attention_mask, prompt_len, self.pack)  # (B, R, H)
        head = unwrap_model(self.lm).get_output_embeddings()
        if response_ids is not None:
            logits = head_logprobs(h, head, response_ids, logprob_chunk, temperature, entropy)
        else:
            logits = head(h)
            if temperature != 1.0:
                logits = logits / temperature
        if self.value_head is None:
            return logits, None
        if self.critic is not None:
            h = response_hidden(self.critic, input_ids, attention_mask, prompt_len, self.pack)
        values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)  # (B, R)
        return logits, values

    def values_from_hidden(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_len: int) -> torch.Tensor:
        """V(s_t) (B, R) from the policy's last hidden states (B, R, H), e.g. the sampler's; a separate
        critic runs its own forward pass over input_ids instead. None without a value head."""
        if self.value_head is None:
            return None
        if self.critic is not None:
            hidden = response_hidden(self.critic, input_ids, attention_mask, prompt_len, self.pack)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    def value_state_dict(self) -> dict[str, torch.Tensor]:
        """The value head (and separate critic) weights, saved beside the policy."""
        if self.value_head is None:
            return {}
        sd = {f"value_head.{k}": v for k, v in self.value_head.state_dict().items()}
        if self.critic is not None:
            sd.update({f"critic.{k}": v for k, v in self.critic.state_dict().items()})
        return sd


def make_critic(lm: nn.Module) -> nn.Module:
    """A separate trainable copy of the policy's backbone (before LoRA: call on the plain model)."""
    critic = copy.deepcopy(backbone_of(lm))
    for p in critic.parameters():
        p.requires_grad_(True)
    return critic


class Reference:
    """log π_ref of response tokens: a frozen copy, or the LoRA policy with its adapter disabled."""

    def __init__(self, lm: nn.Module, shares_policy: bool, pack: bool = True):
        self.lm = lm
        self.shares_policy = shares_policy
        self.pack = pack
        self.home: torch.device | None = None  # offload: where the weights live between uses (the CPU)
        if not shares_policy:
            self.lm.eval()
            for p in self.lm.parameters():
                p.requires_grad_(False)

    @classmethod
    def frozen_copy(cls, lm: nn.Module, pack: bool = True) -> "Reference":
        return cls(copy.deepcopy(lm), shares_policy=False, pack=pack)

    @contextlib.contextmanager
    def on(self, device):
        """The weights on ``device`` for the block, then back ``home`` when offloaded (a frozen model
        of its own only: under LoRA the reference is the policy's own weights)."""
        if self.home is None or self.shares_policy:
            yield self
            return
        self.lm.to(device)
        try:
            yield self
        finally:
            self.lm.to(self.home)

    @torch.no_grad()
    def logits(self, input_ids, attention_mask, prompt_len, temperature=1.0) -> torch.Tensor:
        ctx = self.lm.disable_adapter() if self.shares_policy else contextlib.nullcontext()
        with ctx:
            return lm_response_logits(self.lm, input_ids, attention_mask, prompt_len, temperature, self.pack)


@dataclass
class Rollout:
    """One iteration's experience. N rows, P prompt columns (left-padded), R response columns."""

    input_ids: torch.Tensor  # (N, P + R)
    attention_mask: torch.Tensor  # (N, P + R)
    response_ids: torch.Tensor  # (N, R)
    mask: torch.Tensor  # (N, R) response tokens incl. the stop token
    old_logp: torch.Tensor  # (N, R) log π_θold
    ref_logp: torch.Tensor  # (N, R) log π_ref
    values: torch.Tensor  # (N, R) V_θold(s_t)
    entropy: torch.Tensor  # (N, R)
    scores: torch.Tensor  # (N,) the score trained on: the reward, clipped, minus the missing-EOS penalty
    raw: torch.Tensor  # (N,) the reward as the reward function returned it
    finished: torch.Tensor  # (N,) reached a stop token
    prompt_len: int

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The given rows, with all-padding columns trimmed off both ends."""
        sub = {f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name != "prompt_len"}
        P = self.prompt_len
        prompt_mask = sub["attention_mask"][:, :P]
        first = int((prompt_mask.sum(0) > 0).nonzero().min()) if prompt_mask.any() else P - 1
        first = min(first, P - 1)
        r = int((sub["mask"].sum(0) > 0).nonzero().max()) + 1 if sub["mask"].any() else 1
        sub["input_ids"] = sub["input_ids"][:, first:P + r]
        sub["attention_mask"] = sub["attention_mask"][:, first:P + r]
        for name in ("response_ids", "mask", "old_logp", "ref_logp", "values", "entropy"):
            sub[name] = sub[name][:, :r]
        return Rollout(prompt_len=P - first, **sub)


class PolicyStats(NamedTuple):
    """Per-token statistics of a rollout's responses, each (N, R) (0 on padding but for values)."""

    old_logp: torch.Tensor  # log π_θold(a_t | s_t)
    values: torch.Tensor  # V_θold(s_t), float32
    entropy: torch.Tensor  # H(π_θold(· | s_t))
    ref_logp: torch.Tensor  # log π_ref(a_t | s_t)


@torch.no_grad()
def forward_in_chunks(policy: PolicyWithValue, reference: Reference, input_ids, attention_mask, response_ids,
                      prompt_len: int, temperature: float, chunk: int, sampled=None) -> PolicyStats:
    """old_logp, values, entropy (policy) and ref_logp (reference), each (N, R), in row chunks.

    ``sampled`` — the sampler's ``SampleBatch`` of ``generate(policy_stats=True)``, with its own
    ``logprobs``, ``entropy`` and ``hidden`` — replaces the policy's teacher-forced forward pass:
    old_logp and entropy are taken from it and V from the value head on its hidden states. They
    agree with the forward pass to float rounding (the KV-cache decode sums in another order), so
    the KL to an identical reference is ~1e-7 instead of exactly 0.
    """
    out: dict[str, list[torch.Tensor]] = {"old_logp": [], "values": [], "entropy": [], "ref_logp": []}
    for s in range(0, input_ids.size(0), chunk):
        ids, am, resp = input_ids[s:s + chunk], attention_mask[s:s + chunk], response_ids[s:s + chunk]
        checks = []  # (the sampler already stopped on non-finite logits of its own)
        if sampled is None:
            logits, values = policy(ids, am, prompt_len, temperature)
            out["old_logp"].append(logprobs_from_logits(logits, resp))
            out["entropy"].append(entropy_from_logits(logits))
            checks.append(("policy logits", logits))
        else:
            out["old_logp"].append(sampled.logprobs[s:s + chunk])
            out["entropy"].append(sampled.entropy[s:s + chunk])
            values = policy.values_from_hidden(sampled.hidden[s:s + chunk], ids, am, prompt_len)
        if values is None:  # no value head (RLOO, GRPO): the Rollout's values are zeros
            values = torch.zeros(resp.shape, device=resp.device)
        out["values"].append(values.float())
        ref_logits = reference.logits(ids, am, prompt_len, temperature)
        out["ref_logp"].append(logprobs_from_logits(ref_logits, resp))
        checks += [("reference logits", ref_logits), ("values", values)]
        for name, t in checks:
            if not torch.isfinite(t).all():
                raise FloatingPointError(name)
    return PolicyStats(**{k: torch.cat(v) for k, v in out.items()})


def gather_rollout(acc, sample, stats: PolicyStats, scores: torch.Tensor, raw: torch.Tensor) -> Rollout:
    """Every process's rows into one ``Rollout`` of the global batch, on every process: prompts
    padded on the left and responses on the right to the widest process's, then gathered."""
    device = acc.device
    parts = {
        "prompt_ids": sample.prompt_ids.to(device), "prompt_mask": sample.prompt_mask.to(device),
        "response_ids": sample.response_ids.to(device), "mask": sample.response_mask.to(device),
        "old_logp": stats.old_logp, "ref_logp": stats.ref_logp, "values": stats.values, "entropy": stats.entropy,
        "scores": scores.to(device), "raw": raw.to(device), "finished": sample.finished.to(device).long(),
    }
    if acc.num_processes > 1:
        pad_val = {"prompt_ids": sample.pad_token_id, "response_ids": sample.pad_token_id}
        for k, v in parts.items():
            if v.dim() == 2:
                v = acc.pad_across_processes(v, dim=1, pad_index=pad_val.get(k, 0), pad_first=k.startswith("prompt"))
            parts[k] = acc.gather(v.contiguous())
    return Rollout(input_ids=torch.cat([parts["prompt_ids"], parts["response_ids"]], 1),
                   attention_mask=torch.cat([parts["prompt_mask"], parts["mask"]], 1),
                   response_ids=parts["response_ids"], mask=parts["mask"].float(), old_logp=parts["old_logp"],
                   ref_logp=parts["ref_logp"], values=parts["values"], entropy=parts["entropy"],
                   scores=parts["scores"], raw=parts["raw"], finished=parts["finished"].bool(),
                   prompt_len=parts["prompt_ids"].size(1))
