"""Demonstrations in, token ids with a loss mask out.

Formats (detected from the first row's keys, as ``train-rm`` detects its formats; ``.jsonl`` or
``.jsonl.gz``):

- ``demonstrations``: rankloop's ``demonstrations.jsonl`` (``records.Demonstration``:
  ``prompt_id``, ``prompt`` + ``response`` or ``messages``, labeler, review, …);
- ``text``: TRL's language-modelling rows ``{"text"}`` — every token trained;
- ``prompt_completion``: TRL's ``{"prompt", "completion"}``, plain strings or conversational
  message lists — the completion trained, the prompt not;
- ``messages``: TRL's conversational rows ``{"messages": [...]}`` — the assistant turns trained.

Every bad row is a ``DataError`` naming file and line (or, with ``skip_invalid``, counted and
skipped): an empty or whitespace-only response, a conversation whose prompt does not end with the
user's turn, an unknown role, a chat template that does not render the conversation, a row
longer than the model's context, a line that is not UTF-8 or not JSON.

Tokenisation follows what the PPO sampler does with the trained model (``rankloop.sampling``):
the prompt is rendered by ``prompt_text`` (a chat prompt through the tokenizer's template with the
generation prompt) and tokenised with the tokenizer's special tokens; the response is tokenised on
its own and, for plain text, ended with EOS — so SFT trains on exactly the token sequences the
policy will later be sampled into and stopped by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from rankloop.io import DataError, ReadStats, _read, iter_jsonl
from rankloop.records import Demonstration, Message

FORMATS = ("demonstrations", "text", "prompt_completion", "messages")


class TextRow(NamedTuple):
    """A TRL ``text`` row: trained on every token."""

    text: str
    source: str


SFTRow = Demonstration | TextRow


# ---------------------------------------------------------------- reading


def _parse_demonstration(obj: dict, source: str) -> Demonstration:
    return Demonstration.model_validate({**obj, "source": source})


def _parse_text(obj: dict, source: str) -> TextRow:
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError("a text row needs 'text' (a string)")
    if not text.strip():
        raise ValueError("'text' is empty" if not text else "'text' is only whitespace")
    return TextRow(text, source)


def _parse_prompt_completion(obj: dict, source: str) -> Demonstration:
    if "prompt" not in obj or "completion" not in obj:
        raise ValueError("a prompt/completion row needs 'prompt' and 'completion'")
    prompt, completion = obj["prompt"], obj["completion"]
    pid = str(obj.get("id", source))
    if isinstance(completion, list):  # conversational: the completion is the assistant's turn(s)
        if not isinstance(prompt, list):
            raise ValueError("a conversational 'completion' needs a conversational 'prompt' (a list of messages)")
        if not completion:
            raise ValueError("'completion' is an empty list of messages")
        bad = [m.get("role") if isinstance(m, dict) else m for m in completion
               if not isinstance(m, dict) or m.get("role") != "assistant"]
        if bad:
            raise ValueError(f"'completion' must hold assistant messages only, found {bad[0]!r}")
        if not isinstance(prompt[-1], dict) or prompt[-1].get("role") != "user":
            role = prompt[-1].get("role") if isinstance(prompt[-1], dict) else prompt[-1]
            raise ValueError(f"the prompt's last turn is the {role}'s, not the user's: a completion answers the user")
        return Demonstration(prompt_id=pid, messages=[*prompt, *completion], source=source)
    if not isinstance(completion, str):
        raise ValueError(f"'completion' must be a string or a list of messages, got {type(completion).__name__}")
    if not isinstance(prompt, (str, list)):
        raise ValueError(f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    return Demonstration(prompt_id=pid, prompt=prompt, response=completion, source=source)


def _parse_messages(obj: dict, source: str) -> Demonstration:
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise ValueError("a conversational row needs 'messages' (a list of {role, content})")
    return Demonstration(prompt_id=str(obj.get("id", source)), messages=messages, source=source)


PARSERS = {
    "demonstrations": _parse_demonstration,
    "text": _parse_text,
    "prompt_completion": _parse_prompt_completion,
    "messages": _parse_messages,
}


def detect_sft_format(path: str | Path) -> str:
    """``demonstrations``, ``text``, ``prompt_completion`` or ``messages`` from the first row's keys."""
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        keys = set(obj)
        if "prompt_id" in keys and keys & {"response", "messages"}:
            return "demonstrations"
        if {"prompt", "completion"} <= keys:
            return "prompt_completion"
        if "messages" in keys:
            return "messages"
        if "text" in keys:
            return "text"
        raise DataError(
            path, lineno,
            f"cannot tell the format from the keys {sorted(keys)}: expected demonstrations (prompt_id, prompt, "
            "response | messages), TRL text (text), TRL prompt/completion (prompt, completion) or TRL "
            "conversational (messages)")
    raise DataError(path, None, "file is empty")


def read_demonstrations(path: str | Path, fmt: str | None = None, skip_invalid: bool = False,
                        stats: ReadStats | None = None) -> list[SFTRow]:
    """Read any supported SFT file; ``fmt`` None or ``"auto"`` detects it."""
    fmt = None if fmt in (None, "auto") else fmt
    fmt = fmt or detect_sft_format(path)
    if fmt not in PARSERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _read(path, PARSERS[fmt], skip_invalid, stats)


# ---------------------------------------------------------------- chat templates

# rankloop's plain rendering of a conversation (``records.render_prompt``) as a Jinja chat template,
# with EOS ending each assistant turn so the model learns where its turn stops.
HH_TEMPLATE = (
    "{% for m in messages %}"
    "{% set name = {'user': 'Human', 'assistant': 'Assistant', 'system': 'System'}[m['role']] %}"
    "{{ '\n\n' + name + ': ' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"hh": HH_TEMPLATE}


def resolve_chat_template(value: str) -> str:
    """A built-in name, a Jinja file or the template itself."""
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"chat_template {value!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}), "
                         "a Jinja file nor a template")
    return path.read_text(encoding="utf-8")


class NoChatTemplateError(ValueError):
    pass


def needs_template(rows: list[SFTRow]) -> bool:
    return any(isinstance(r, Demonstration) and r.conversation is not None for r in rows)


def conversation_pieces(messages: list[Message], tokenizer) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, trained) pieces: each assistant turn (its
    content and the template's end of turn) trained, everything between not. The text before an
    assistant turn is the template's rendering with the generation prompt — what the policy is
    given when it writes that turn — so each rendering must extend the one before."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise ValueError(f"the chat template does not render the conversation incrementally (messages[{i}]: "
                             "the text before this assistant turn is not a prefix of the text through it), so "
                             "the assistant turns cannot be told apart; pass another template with --chat-template")
        pieces += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    return pieces


def _render(tokenizer, messages: list[Message], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja2's TemplateError, or a template's own raise_exception
        raise ValueError(f"the chat template does not render this conversation: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- tokenising


class EncodedDemo(NamedTuple):
    """One demonstration as token ids and which of them the loss trains on."""

    ids: list[int]  # prompt + response (or the whole text / conversation)
    trained: list[bool]  # True where the token is a target (response, assistant turns); the first never is

    @property
    def n_targets(self) -> int:
        return sum(self.trained[1:])


def encode_row(row: SFTRow, tokenizer, max_length: int, context: int | None = None) -> EncodedDemo:
    """Token ids and the loss mask of one row (``ValueError`` with what is wrong)."""
    eos = tokenizer.eos_token_id
    if isinstance(row, TextRow):
        pieces = [(row.text, True)]
        end = [eos] if eos is not None else []
    elif row.conversation is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise NoChatTemplateError("a conversation needs a chat template")
        pieces, end = conversation_pieces(row.conversation, tokenizer), []
    else:
        pieces = [(str(row.prompt), False), (row.response, True)]
        end = [eos] if eos is not None else []
    ids: list[int] = []
    trained: list[bool] = []
    for k, (text, is_trained) in enumerate(pieces):
        if not text:
            continue
        tokens = tokenizer(text, add_special_tokens=not ids)["input_ids"]
        ids += tokens
        trained += [is_trained] * len(tokens)
    if end and ids and ids[-1] != eos:
        ids += end
        trained += [True]
    if len(ids) > max_length:
        limit = f"max_length {max_length}" + (f" (the model's context: {context})" if context else "")
        raise ValueError(f"{len(ids)} tokens, longer than {limit}: shorten it"
                         + (", or raise --max-length" if context and max_length < context else ""))
    enc = EncodedDemo(ids, trained)
    if enc.n_targets == 0:
        raise ValueError("nothing to train on: the response encodes to no tokens after the prompt")
    return enc


def encode_rows(rows: list[SFTRow], tokenizer, max_length: int, path: str, skip_invalid: bool = False,
                stats: ReadStats | None = None, context: int | None = None) -> list[EncodedDemo]:
    """Encode every row; a row that cannot be encoded is a ``DataError`` at its file and line."""
    out = []
    for row in rows:
        try:
            out.append(encode_row(row, tokenizer, max_length, context))
        except NoChatTemplateError:
            raise  # a property of the tokenizer, not of the row: never skipped
        except ValueError as e:
            line = _line_of(row)
            err = DataError(path, line, str(e))
            if not skip_invalid:
                raise err from None
            if stats is not None:
                stats.skip(err)
    return out


def _line_of(row: SFTRow) -> int | None:
    src = row.source or ""
    tail = src.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


# ---------------------------------------------------------------- data order


def row_summary(rows: list[Any]) -> str:
    kinds = {"text": sum(isinstance(r, TextRow) for r in rows)}
    demos = [r for r in rows if isinstance(r, Demonstration)]
    kinds["conversations"] = sum(d.conversation is not None for d in demos)
    kinds["prompt/response"] = len(demos) - kinds["conversations"]
    return ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
