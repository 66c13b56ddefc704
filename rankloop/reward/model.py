"""The reward model: a Hugging Face backbone with a scalar head, read at the right token.

- Causal backbones (GPT-2, Llama, Qwen2, … — every ``*ForSequenceClassification`` with a ``score``
  head) are read at the **last real token**, found from the attention mask. transformers' own
  pooling looks for the rightmost token that is not the pad id, which is wrong whenever pad = EOS
  and the text ends in EOS; and applying the head at one position instead of all T is cheaper.
- Encoders (BERT and friends) are read where they were pre-trained to summarise: their own
  pooled [CLS] output.

Texts are ``render(tokenizer, prompt, response)`` — the one rendering train-rm, eval-rm and PPO's
scoring share: for a message list and a tokenizer with a chat template, the template over the
messages plus the assistant turn (ending in its end-of-turn token); else ``render_prompt(prompt) +
response`` — tokenised with truncation on the left, so an over-long text keeps the end of the
response (see ``rankloop.models``). In PPO the prompts arrive as the policy's renderings
(``rankloop.records.RenderedPrompt``); their ``content`` is what is rendered here.

Normalisation (Ziegler et al. 2019, §2: mean 0 and variance 1 on the reference distribution):
after training, a reference set's scores give an ``offset`` (mean) and ``scale`` (std) stored
beside the weights in ``reward_normalisation.json``; ``RewardScorer.score`` returns
``(r − offset) / scale`` so the reference set scores mean 0, std 1. (Stiennon et al. 2020 only
shift, so that their reference summaries score 0 on average; they do not rescale.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from rankloop.models import is_causal_scorer, unwrap_model
from rankloop.ops import last_token_index
from rankloop.records import Prompt, PromptContent, RenderedPrompt, prompt_content, render_prompt
from rankloop.reward.packing import packed_scores

if TYPE_CHECKING:
    from rankloop.packing import PackedBatch

NORMALISATION_FILE = "reward_normalisation.json"


# ---------------------------------------------------------------- scores


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward ``(N,)`` of each sequence from a sequence-classification model (num_labels=1).

    input_ids, attention_mask: (N, T). Causal models: the head applied to the hidden state of the
    last real token. Encoders: the model's own pooled logit.
    """
    m = unwrap_model(model)
    if is_causal_scorer(m):
        backbone = getattr(m, m.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (N, T, H)
        idx = last_token_index(attention_mask)  # (N,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (N, H)
        return m.score(last).squeeze(-1).float()  # (N,)
    return m(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()


class ScoreModule(nn.Module):
    """``forward(input_ids, attention_mask) -> (N,)`` around a sequence-classification model.

    The trainer hands this wrapper to ``accelerator.prepare`` so data-parallel wrappers see one
    forward call (DDP's gradient hooks need the call to go through the wrapped module). Given a
    ``packed`` batch instead (``rankloop.reward.packing``), the candidates are forwarded without
    padding, causal models sharing each ranking's prompt tokens.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                packed: "PackedBatch | None" = None) -> torch.Tensor:
        if packed is not None:
            return packed_scores(self.model, packed)
        return sequence_scores(self.model, input_ids, attention_mask)


# ---------------------------------------------------------------- text → tokens


def render(tokenizer, prompt: "PromptContent | Prompt | RenderedPrompt", response: str) -> str:
    """The text a reward model reads for ``(prompt, response)``, in training, evaluation and PPO alike.

    ``prompt``: text or chat messages, a ``Prompt``, or a policy's rendering of one (``RenderedPrompt``,
    as PPO passes): never the policy's template, always the reward model's own rendering of the content.
    """
    prompt = prompt_content(prompt)
    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None):
        msgs = list(prompt) + [{"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    return render_prompt(prompt) + response


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated on the left to ``max_length`` (special tokens kept)."""
    if tokenizer.truncation_side != "left":
        tokenizer.truncation_side = "left"
    return tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence of the batch: ``input_ids, attention_mask`` (N, T)."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
    return ids, att


# ---------------------------------------------------------------- normalisation


@dataclass
class Normalisation:
    """``normalised = (raw − offset) / scale``; the reference set then has mean 0, std 1."""

    offset: float = 0.0
    scale: float = 1.0
    reference: str | None = None
    n: int = 0

    @classmethod
    def fit(cls, raw: torch.Tensor, reference: str | None = None) -> "Normalisation":
        raw = raw.double()
        std = raw.std(unbiased=False).item() if raw.numel() > 1 else 1.0
        return cls(offset=raw.mean().item(), scale=std if std > 1e-8 else 1.0, reference=reference, n=raw.numel())

    def save(self, model_dir: str | Path) -> None:
        from rankloop.io import write_json

        write_json(Path(model_dir) / NORMALISATION_FILE, self.__dict__)

    @classmethod
    def load(cls, model_dir: str | Path) -> "Normalisation | None":
        path = Path(model_dir) / NORMALISATION_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- inference


class RewardScorer:
    """Scores (prompt, response) pairs with a trained reward model.

    >>> rm = RewardScorer.from_pretrained("runs/rm")
    >>> rm.score(["Tell me a story."], [" Once upon a time…"])  # tensor of shape (1,)
    """

    def __init__(self, model: nn.Module, tokenizer, normalisation: Normalisation | None = None,
                 max_length: int = 512, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalisation = normalisation
        self.max_length = max_length
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, dir_or_id: str | Path, device: str = "cpu", dtype: str = "float32",
                        max_length: int | None = None) -> "RewardScorer":
        from rankloop.models import load_sequence_scorer, load_tokenizer, model_max_positions

        tok = load_tokenizer(dir_or_id, padding_side="right")
        model = load_sequence_scorer(dir_or_id, dtype=dtype, tokenizer=tok).to(device)
        if max_length is None:
            max_length = _saved_max_length(dir_or_id) or 512
        max_length = min(max_length, model_max_positions(model))
        return cls(model, tok, Normalisation.load(dir_or_id) if Path(dir_or_id).is_dir() else None, max_length, device)

    @property
    def offset(self) -> float:
        return self.normalisation.offset if self.normalisation else 0.0

    @property
    def scale(self) -> float:
        return self.normalisation.scale if self.normalisation else 1.0

    @torch.no_grad()
    def score_ids(self, seqs: Sequence[Sequence[int]], batch_size: int = 32, normalise: bool = True) -> torch.Tensor:
        """Scores ``(N,)`` of already tokenised sequences, batched by length to waste little padding."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = torch.empty(len(seqs), dtype=torch.float32)
        pad = self.tokenizer.pad_token_id
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, att = pad_batch([seqs[i] for i in idx], pad)
            out[idx] = sequence_scores(self.model, ids.to(self.device), att.to(self.device)).cpu()
        if normalise and self.normalisation is not None:
            out = (out - self.normalisation.offset) / self.normalisation.scale
        return out

    def score(self, prompts: Sequence[PromptContent | Prompt | RenderedPrompt], responses: Sequence[str],
              batch_size: int = 32, normalise: bool = True) -> torch.Tensor:
        """Reward of each (prompt, response), ``(B,)`` float32 on CPU (texts from ``render``)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return torch.empty(0)
        texts = [render(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        return self.score_ids(encode_texts(self.tokenizer, texts, self.max_length), batch_size, normalise)


def _saved_max_length(model_dir: str | Path) -> int | None:
    path = Path(model_dir) / "train_config.json"
    if path.exists():
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["max_length"])
        except (KeyError, ValueError, TypeError):
            return None
    return None
