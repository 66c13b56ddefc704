"""Loading, freezing and LoRA for any Hugging Face backbone, and tiny models for tests.

Every stage loads models through here, so the tokenizer rules live in one place:

- a pad token where the model has none (EOS, else UNK, else a new ``<pad>``);
- ``truncation_side = "left"`` for scoring, so an over-long text keeps the end of the response
  (special tokens such as BOS/CLS are added after truncation and survive);
- the padding side is the caller's choice: right for scoring, left for generation.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers.utils import logging as _hf_logging

# Weight-loading bars and load reports for a freshly initialised head are noise on every run.
_hf_logging.disable_progress_bar()
_hf_logging.set_verbosity_error()

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def load_tokenizer(name_or_path: str | Path, padding_side: Literal["left", "right"] = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = padding_side
    tok.truncation_side = "left"
    return tok


def _sync_pad(model, tok) -> None:
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))


def load_causal_lm(name_or_path: str | Path, dtype: str = "float32", tokenizer=None):
    """A causal LM for sampling, the policy or the frozen reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype(dtype))
    if tokenizer is not None:
        _sync_pad(model, tokenizer)
    return model


def head_size(config) -> int | None:
    """Attention head size from a model config (``head_dim``, or hidden size / heads)."""
    if getattr(config, "head_dim", None):
        return int(config.head_dim)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model under peft / DDP / ``torch.compile`` wrappers (LoRA adapters stay
    active: they live in its layers)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def backbone_of(lm: nn.Module) -> nn.Module:
    """The transformer without its head (``model.model`` for Llama, ``model.transformer`` for GPT-2)."""
    base = unwrap_model(lm)
    return getattr(base, base.base_model_prefix)


def is_causal_scorer(model: nn.Module) -> bool:
    """A causal LM with a scalar ``score`` head (``*ForSequenceClassification`` of GPT-2, Llama, …),
    which reads its score at the last real token; encoders (BERT) read their [CLS] state instead."""
    m = unwrap_model(model)
    return isinstance(getattr(m, "score", None), nn.Module) and hasattr(m, m.base_model_prefix)


def hidden_size(model: nn.Module) -> int:
    """Width of the model's hidden states (``hidden_size``, GPT-2's ``n_embd``)."""
    cfg = unwrap_model(model).config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))


def model_max_positions(model_or_config) -> int:
    """The longest input the backbone's position embeddings allow (512 when the config says nothing)."""
    cfg = model_or_config.config if hasattr(model_or_config, "config") else model_or_config
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 512


SMALL_HEAD = 8  # at or below this head size, eager attention beats torch's CPU SDPA kernels


def prefer_cpu_attention(model: nn.Module, device: str | torch.device) -> str:
    """Switch a model that runs on CPU with tiny attention heads from SDPA to eager attention.

    torch's CPU SDPA kernels carry a fixed cost per (row, head) that dominates when heads are tiny:
    for stories260K (head size 8) eager attention measured ~15 % faster per PPO minibatch step
    (forward + backward) and 13–24 % faster decoding; for a head size of 64 (gpt2-20m) the two
    were level, and sizes in between were not measured, so they keep SDPA. GPUs keep SDPA.
    Returns the implementation in use.
    """
    cfg = model.config
    if (torch.device(device).type == "cpu" and cfg._attn_implementation == "sdpa"
            and (head_size(cfg) or SMALL_HEAD + 1) <= SMALL_HEAD):
        model.set_attn_implementation("eager")
    return model.config._attn_implementation


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero on CPU for the duration (restored to IEEE behaviour after).

    As PPO trains, softmax tails and their gradients fall into the denormal range, where x86 CPUs
    take a slow path: on stories260K an iteration grew from 1.13 to 1.40 s over six iterations
    with denormals and stayed at 1.07–1.23 s with them flushed. Values below ~1.2e-38 become 0.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(False)


def load_sequence_scorer(name_or_path: str | Path, dtype: str = "float32", tokenizer=None):
    """Any backbone with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``).

    A causal-LM checkpoint gets a freshly initialised ``score`` head; a rankloop reward-model
    checkpoint loads with its trained head.
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path), num_labels=1, dtype=torch_dtype(dtype)
    )
    model.config.problem_type = "regression"
    if tokenizer is not None:
        _sync_pad(model, tokenizer)
    return model


# ---------------------------------------------------------------- freezing

_LAYER_LIST = re.compile(r"(^|\.)(layers|layer|h|blocks)$")


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks (Llama/Qwen ``layers``, GPT-2 ``h``, BERT ``layer``)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and _LAYER_LIST.search(name) and len(mod) > 0:
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")
    return best


def freeze_bottom(model: nn.Module, n_layers: int) -> int:
    """Freeze the embeddings and the first ``n_layers`` blocks; returns the count of frozen params.

    ``n_layers = 0`` freezes nothing. Negative counts from the top (``-1`` = all but the last block).
    """
    if n_layers == 0:
        return 0
    layers = transformer_layers(model)
    n = len(layers) + n_layers if n_layers < 0 else n_layers
    if not 0 < n <= len(layers):
        raise ValueError(f"--freeze-layers {n_layers} is out of range for a model with {len(layers)} layers")
    frozen = [model.get_input_embeddings()]
    for name, mod in model.named_modules():  # position embeddings (GPT-2 wpe, BERT embeddings)
        if name.endswith(("wpe", "embeddings", "embed_positions")):
            frozen.append(mod)
    frozen += list(layers[:n])
    count = 0
    for mod in frozen:
        for p in mod.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                count += p.numel()
    return count


# ---------------------------------------------------------------- LoRA


def apply_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0,
               task: Literal["causal", "reward"] = "causal", target_modules: list[str] | str | None = None):
    """Wrap ``model`` with peft LoRA adapters on every linear layer of the backbone.

    For reward models the scalar head is trained in full (peft's ``modules_to_save``).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=target_modules or "all-linear",
        task_type=TaskType.SEQ_CLS if task == "reward" else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, cfg)


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors) where torch has the fused kernel for the parameters'
    device and dtype. On this project's CPU benchmark a 19M-parameter step takes 13 ms fused against
    64 ms for the default for-each implementation; the arithmetic is the same AdamW.

    Parameters stored in a low dtype (``precision = "weights"``) get float32 master weights
    (``MasterWeightAdamW``); float32 parameters are stepped directly, as before."""
    params = list(params)
    fusable = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in params):
        return MasterWeightAdamW(params, fused=fusable or None, **kwargs)
    return torch.optim.AdamW(params, fused=fusable or None, **kwargs)


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW over float32 master copies of low-precision (bfloat16) parameters.

    A bfloat16 weight has 8 significant bits: an update smaller than 1/256 of the weight rounds
    away (lr·update ≪ |w| is the usual case), so stepping bfloat16 weights in place silently stops
    learning. Here the optimizer's parameters are float32 copies: ``step`` casts each model
    gradient to float32 onto its copy, steps the copies (Adam moments in float32 too) and writes
    them back rounded to the model's dtype. float32 parameters are their own master. The masters
    travel in ``state_dict`` so a resumed run continues from the unrounded weights.
    """

    def __init__(self, params, **kwargs):
        self.model_params = list(params)
        masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True)
                   for p in self.model_params]
        super().__init__(masters, **kwargs)

    def _pairs(self):
        masters = [m for g in self.param_groups for m in g["params"]]
        return [(p, m) for p, m in zip(self.model_params, masters) if p is not m]

    @torch.no_grad()
    def step(self, closure=None):
        for p, m in self._pairs():
            m.grad = None if p.grad is None else p.grad.float()
        loss = super().step(closure)
        for p, m in self._pairs():
            p.copy_(m)
            m.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        super().zero_grad(set_to_none)

    def state_dict(self):
        sd = super().state_dict()
        sd["master_weights"] = {i: m.detach().clone() for i, (p, m) in enumerate(self._all()) if p is not m}
        return sd

    def load_state_dict(self, state_dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights", {})
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for i, (p, m) in enumerate(self._all()):
                if i in saved:
                    m.copy_(saved[i])
                    p.copy_(m)

    def _all(self):
        return list(zip(self.model_params, [m for g in self.param_groups for m in g["params"]]))


# ---------------------------------------------------------------- gradient checkpointing


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block's forward in the backward pass (``torch.utils.checkpoint``,
    non-reentrant) instead of keeping its activations; returns the number of blocks wrapped.

    Not transformers' ``gradient_checkpointing_enable``: that acts only in ``train()`` mode, and the
    RL learners run their policy in ``eval()`` mode (no dropout: the rollout's log-probs and the
    update's must come from one distribution). Here a block is checkpointed whenever gradients are
    being recorded, in either mode; the RNG state is replayed, so dropout masks match and the
    gradients are the same as without (tests/test_memory.py)."""
    import types

    layers = transformer_layers(model)
    for layer in layers:
        if not getattr(layer, "_rankloop_checkpointed", False):
            # a bound method (not a closure over this layer): a deepcopy of the model (the frozen
            # reference, a separate critic) rebinds it to the copy's own layer
            layer.forward = types.MethodType(_checkpointed_forward, layer)
            layer._rankloop_checkpointed = True
    return len(layers)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    inner = functools.partial(type(self).forward, self)
    if torch.is_grad_enabled():
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)
    return inner(*args, **kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# ---------------------------------------------------------------- tiny models and tokenizers


def train_tokenizer(texts: list[str], vocab_size: int = 512, save_dir: str | Path | None = None):
    """A byte-level BPE tokenizer trained with the ``tokenizers`` library, as a HF fast tokenizer.

    Special tokens: ``<pad>`` = 0, ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS). BOS is prepended on encode.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.truncation_side = "left"
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok


Arch = Literal["gpt2", "llama", "qwen2", "bert"]


def tiny_config(arch: Arch = "gpt2", vocab_size: int = 320, hidden: int = 32, layers: int = 2, heads: int = 2,
                max_positions: int = 256, pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2):
    """A transformers config for a small model of the given family (all real HF model classes)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                          n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    if arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        return cls(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                   max_position_embeddings=max_positions, tie_word_embeddings=True, **ids)
    if arch == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=hidden * 2,
                          max_position_embeddings=max_positions, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, pad_token_id=pad_token_id)
    raise ValueError(f"unknown tiny architecture {arch!r}")
