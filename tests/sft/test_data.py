"""SFT data: the formats (detected, plain and .jsonl.gz), the loss masks they give, the
Demonstration record's JSONL, and every bad input of issue 12 — each an error naming file and
line, or a counted skip with skip_invalid."""

import json

import pytest

from rankloop.config import ConfigError
from rankloop.io import DataError, ReadStats, write_jsonl as write_records
from rankloop.models import load_tokenizer
from rankloop.records import Demonstration
from rankloop.sft.config import SFTConfig
from rankloop.sft.data import (HH_TEMPLATE, TextRow, detect_sft_format, encode_row, encode_rows,
                               read_demonstrations)
from rankloop.sft.train import load_data, train_sft

from .conftest import write_jsonl

CHATML = ("{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}")
CONV = [{"role": "system", "content": "be kind."}, {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "sat on the mat."}, {"role": "user", "content": "and the dog"},
        {"role": "assistant", "content": "ran in the park."}]


@pytest.fixture
def tok(tiny_gpt2):
    return load_tokenizer(tiny_gpt2)


def trained_text(enc, tok) -> str:
    return tok.decode([t for t, m in zip(enc.ids, enc.trained) if m], skip_special_tokens=False)


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("gz", [False, True])
def test_formats_are_detected_from_the_first_row(tmp_path, gz):
    cases = {
        "demonstrations": {"prompt_id": "p1", "prompt": "hi", "response": " there", "labeler": "ann"},
        "text": {"text": "the cat sat"},
        "prompt_completion": {"prompt": "the cat", "completion": " sat"},
        "messages": {"messages": CONV},
    }
    for fmt, row in cases.items():
        p = write_jsonl(tmp_path / (f"{fmt}.jsonl" + (".gz" if gz else "")), [row, row], gz=gz)
        assert detect_sft_format(p) == fmt
        assert len(read_demonstrations(p)) == 2


def test_unknown_keys_name_the_formats(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"x.jsonl:1: cannot tell the format .*TRL text"):
        read_demonstrations(p)


def test_demonstration_jsonl_round_trip(tmp_path):
    demos = [Demonstration(prompt_id="p1", prompt="the cat", response=" sat.", labeler="ann", edited_from="c7",
                           review="accepted", created_at="2026-01-02T03:04:05"),
             Demonstration(prompt_id="p2", messages=CONV[1:3], labeler="bob")]
    p = tmp_path / "demonstrations.jsonl"
    write_records(p, [d.to_row() for d in demos])
    back = read_demonstrations(p)
    assert [d.model_dump(exclude={"source"}) for d in back] == [d.model_dump(exclude={"source"}) for d in demos]
    assert back[0].source == f"{p}:1" and "source" not in json.loads(p.read_text().splitlines()[0])


def test_prompt_tokens_are_masked_and_the_response_ends_with_eos(tok):
    enc = encode_row(Demonstration(prompt_id="p", prompt="the cat", response=" sat on the mat."), tok, 64)
    n_prompt = len(tok("the cat")["input_ids"])
    assert enc.trained[:n_prompt] == [False] * n_prompt and all(enc.trained[n_prompt:])
    assert enc.ids[-1] == tok.eos_token_id
    assert trained_text(enc, tok) == " sat on the mat.</s>"
    text = encode_row(TextRow("the cat sat", "f:1"), tok, 64)
    assert all(text.trained) and text.n_targets == len(text.ids) - 1  # every token but the first is a target


@pytest.mark.parametrize("template,expected", [
    (CHATML, "sat on the mat. <|end|>ran in the park. <|end|>"),
    (HH_TEMPLATE, " sat on the mat.</s> ran in the park.</s>"),
])
def test_conversations_train_on_the_assistant_turns_only(tok, template, expected):
    tok.chat_template = template
    enc = encode_row(Demonstration(prompt_id="p", messages=CONV), tok, 256)
    assert trained_text(enc, tok) == expected
    # The text before each assistant turn is what the policy is prompted with (prompt_text).
    from rankloop.records import Prompt
    from rankloop.sampling import prompt_text

    first_turn = encode_row(Demonstration(prompt_id="p", prompt=CONV[:2], response="sat on the mat."), tok, 256)
    prompt_ids = tok(prompt_text(Prompt(id="p", messages=CONV[:2]), tok))["input_ids"]
    assert first_turn.ids[:len(prompt_ids)] == prompt_ids and not any(first_turn.trained[:len(prompt_ids)])


def test_hh_template_renders_as_render_prompt(tok):
    from rankloop.records import render_prompt

    tok.chat_template = HH_TEMPLATE
    assert tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True) == render_prompt(CONV[:2])


def test_prompt_completion_conversational(tmp_path, tok):
    tok.chat_template = CHATML
    p = write_jsonl(tmp_path / "c.jsonl", [{"prompt": CONV[:2], "completion": [CONV[2]]}])
    (row,) = read_demonstrations(p)
    assert trained_text(encode_row(row, tok, 256), tok) == "sat on the mat. <|end|>"


# ---------------------------------------------------------------- bad input, each with file and line


BAD_ROWS = [
    ({"prompt": "the cat", "completion": ""}, "the response is empty"),
    ({"prompt": "the cat", "completion": "  \n\t "}, "the response is only whitespace"),
    ({"text": "   "}, "'text' is only whitespace"),
    ({"prompt_id": "p", "prompt": CONV[:3], "response": "x"}, "the prompt's last turn is the assistant's, not the user's"),
    ({"prompt": CONV[:3], "completion": [{"role": "assistant", "content": "x"}]}, "last turn is the assistant's"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}, "unknown role 'robot'"),
    ({"messages": CONV[:2]}, "ends with the user's turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}, "assistant turn is empty"),
    ({"prompt_id": "p", "prompt": "hi", "response": "x", "review": "maybe"}, "review must be one of"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS)
def test_bad_rows_name_file_and_line_or_are_counted(tmp_path, bad, message):
    good = {"prompt_id": "g", "prompt": "hi", "response": " there"} if "prompt_id" in bad else (
        {"messages": CONV} if "messages" in bad else {"text": "the cat"} if "text" in bad
        else {"prompt": "the cat", "completion": " sat"})
    p = write_jsonl(tmp_path / "bad.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        read_demonstrations(p)
    stats = ReadStats()
    assert len(read_demonstrations(p, skip_invalid=True, stats=stats)) == 2
    assert stats.skipped == 1 and "bad.jsonl:2" in stats.reasons[0]


def test_non_utf8_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"text": "the cat"}\n{"text": "caf\xe9"}\n{"text": "a dog"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        read_demonstrations(p)
    stats = ReadStats()
    assert len(read_demonstrations(p, skip_invalid=True, stats=stats)) == 2 and stats.skipped == 1


def test_longer_than_the_context_names_the_line_and_the_limit(tmp_path, tiny_gpt2):
    long = " ".join(["the cat sat on the mat."] * 80)  # > 256 positions of the tiny model
    p = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "a", "completion": " b"}, {"prompt": "a", "completion": long}])
    cfg = SFTConfig(data=str(p), model=str(tiny_gpt2), output=str(tmp_path / "o"), progress=False)
    from rich.console import Console

    with pytest.raises(DataError, match=r"long.jsonl:2: \d+ tokens, longer than max_length 256 \(the model's context: 256\)"):
        load_data(cfg, Console(quiet=True))
    data = load_data(cfg.model_copy(update={"skip_invalid": True}), Console(quiet=True))
    assert len(data.train) == 1 and data.skipped == 1
    short = cfg.model_copy(update={"max_length": 8})
    with pytest.raises(DataError, match=r"longer than max_length 8 .*raise --max-length"):
        load_data(short, Console(quiet=True))


def test_conversations_without_a_chat_template_name_the_flag(tmp_path, tiny_gpt2):
    p = write_jsonl(tmp_path / "conv.jsonl", [{"messages": CONV}])
    cfg = SFTConfig(data=str(p), model=str(tiny_gpt2), output=str(tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match=r"has no chat template.*--chat-template hh"):
        train_sft(cfg)
    from rich.console import Console

    data = load_data(cfg.model_copy(update={"chat_template": "hh"}), Console(quiet=True))
    assert data.tokenizer.chat_template == HH_TEMPLATE and len(data.train) == 1


def test_a_chat_template_that_does_not_render(tmp_path, tok):
    raising = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
               "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tok.chat_template = raising
    rows = [Demonstration(prompt_id="p", messages=CONV[1:3], source="d.jsonl:1"),
            Demonstration(prompt_id="q", messages=CONV, source="d.jsonl:2")]
    with pytest.raises(DataError, match=r"d.jsonl:2: the chat template does not render this conversation.*no system"):
        encode_rows(rows, tok, 256, "d.jsonl")
    assert len(encode_rows(rows, tok, 256, "d.jsonl", skip_invalid=True)) == 1
    tok.chat_template = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(DataError, match=r"d.jsonl:1: nothing to train on"):  # a template that drops assistant turns
        encode_rows(rows, tok, 256, "d.jsonl")
    tok.chat_template = "{{ messages[0]['content'] "  # a Jinja syntax error
    with pytest.raises(DataError, match=r"d.jsonl:1: the chat template does not render"):
        encode_rows(rows, tok, 256, "d.jsonl")
    # a template that renders earlier turns differently once a later one exists: turns cannot be told apart
    tok.chat_template = "{% for m in messages %}{{ m['content'] if loop.last else '*' }}{% endfor %}"
    with pytest.raises(DataError, match=r"d.jsonl:1: .*does not render the conversation incrementally"):
        encode_rows(rows, tok, 256, "d.jsonl")
    stats = ReadStats()
    assert encode_rows(rows, tok, 256, "d.jsonl", skip_invalid=True, stats=stats) == [] and stats.skipped == 2


def test_a_tokenizer_without_a_pad_token_trains_as_one_with(tmp_path, tiny_gpt2, sft_data):
    """Padding is never attended to nor read, so the pad id is irrelevant: EOS stands in for it."""
    import shutil

    from transformers import AutoTokenizer

    nopad = tmp_path / "nopad"
    shutil.copytree(tiny_gpt2, nopad)
    t = AutoTokenizer.from_pretrained(str(nopad))
    t.pad_token = None
    t.save_pretrained(str(nopad))
    assert AutoTokenizer.from_pretrained(str(nopad)).pad_token is None
    runs = {}
    for name, model in (("pad", tiny_gpt2), ("nopad", nopad)):
        out = train_sft(SFTConfig(data=str(sft_data["train"]), model=str(model), output=str(tmp_path / name),
                                  max_steps=3, batch_size=8, lr=3e-3, log_every=1, pack=False, progress=False))
        runs[name] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert runs["pad"] == runs["nopad"]


def test_a_tokenizer_without_eos_is_a_clear_error(tmp_path, tiny_gpt2, sft_data):
    import shutil

    from transformers import AutoTokenizer

    noeos = tmp_path / "noeos"
    shutil.copytree(tiny_gpt2, noeos)
    t = AutoTokenizer.from_pretrained(str(noeos))
    t.eos_token = None
    t.save_pretrained(str(noeos))
    cfg = SFTConfig(data=str(sft_data["train"]), model=str(noeos), output=str(tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="has no EOS token"):
        train_sft(cfg)


def test_rejected_demonstrations_are_not_trained_on(tmp_path, tiny_gpt2):
    rows = [{"prompt_id": f"p{i}", "prompt": "the cat", "response": " sat.", "review": r}
            for i, r in enumerate(["accepted", "rejected", "pending", "accepted"])]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    from rich.console import Console

    data = load_data(SFTConfig(data=str(p), model=str(tiny_gpt2), output=str(tmp_path / "o")), Console(quiet=True))
    assert len(data.train) == 3 and data.rejected == 1


def test_demonstration_record_rules():
    with pytest.raises(ValueError, match="exactly one of 'response'"):
        Demonstration(prompt_id="p", prompt="hi")
    with pytest.raises(ValueError, match="exactly one of 'response'"):
        Demonstration(prompt_id="p", prompt="hi", response="x", messages=CONV)
    with pytest.raises(ValueError, match="needs the 'prompt'"):
        Demonstration(prompt_id="p", response="x")
    with pytest.raises(ValueError, match="leave 'prompt' out"):
        Demonstration(prompt_id="p", prompt="hi", messages=CONV)
    with pytest.raises(ValueError, match=r"messages\[2\]: an assistant turn must follow a user turn"):
        Demonstration(prompt_id="p", messages=[CONV[1], CONV[2], CONV[2]])
    plain = Demonstration(prompt_id="p", prompt="hi", response=" there")
    assert plain.conversation is None
    chat = Demonstration(prompt_id="p", prompt=CONV[:2], response="sat.")
    assert chat.conversation == [*CONV[:2], {"role": "assistant", "content": "sat."}]
