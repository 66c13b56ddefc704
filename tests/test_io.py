"""Formats at the stage boundaries: rankings JSONL, TRL preference rows, HH-RLHF transcripts —
and bad input, reported with file and line or counted as skipped."""

import gzip
import json

import pytest

from rankloop.io import (DataError, ReadStats, detect_format, jsonl_line, jsonl_lines, read_candidates, read_preferences,
                         read_prompts, split_hh, write_jsonl, write_rankings, write_trl)
from rankloop.records import CandidateText, RankedExample, Ranking

GOOD = {"prompt_id": "p1", "prompt": "q?", "candidates": [{"id": "a", "text": "A"}, {"id": "b", "text": "B"},
        {"id": "c", "text": "C"}], "ranking": ["b", ["a", "c"]], "labeler": "ann"}


def write_lines(path, lines):
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def row(**over):
    return json.dumps({**GOOD, **over})


# ---------------------------------------------------------------- formats


def test_rankings_round_trip(tmp_path):
    p = write_lines(tmp_path / "r.jsonl", [row(), "", row(prompt_id="p2", ranking=["a", "b", "c"])])
    assert detect_format(p) == "rankings"
    ex = read_preferences(p)
    assert [e.ranking.order for e in ex] == [[["b"], ["a", "c"]], [["a"], ["b"], ["c"]]]
    assert ex[0].ranking.labeler == "ann" and ex[0].source.endswith("r.jsonl:1") and ex[1].source.endswith(":3")
    write_rankings(tmp_path / "again.jsonl", ex)
    assert [e.to_row() for e in read_preferences(tmp_path / "again.jsonl")] == [e.to_row() for e in ex]


def test_trl_plain_conversational_implicit_and_margin(tmp_path):
    rows = [
        {"prompt": "2+2?", "chosen": " 4", "rejected": " 5", "margin": 1.5},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
    ]
    p = write_lines(tmp_path / "t.jsonl", [json.dumps(r) for r in rows])
    assert detect_format(p) == "trl"
    a, b = read_preferences(p)
    assert a.texts_in_rank_order() == ([" 4", " 5"], [0, 1]) and a.margin == 1.5
    assert b.prompt == [{"role": "user", "content": "hi"}] and b.texts_in_rank_order()[0] == ["hello", "go away"]
    implicit = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]}
    q = write_lines(tmp_path / "i.jsonl", [json.dumps(implicit)])
    (c,) = read_preferences(q)
    assert c.prompt == [{"role": "user", "content": "hi"}] and c.texts_in_rank_order()[0] == ["hello", "no"]
    # A K-way ranking exports as its C(K,2) − ties pairs.
    ex = RankedExample(prompt_id="p", prompt="q", candidates=[CandidateText(id=i, text=i * 3) for i in "abcd"],
                       ranking=Ranking(prompt_id="p", order=["a", ["b", "c"], "d"]))
    assert write_trl(tmp_path / "out.jsonl", [ex]) == 5
    assert len(read_preferences(tmp_path / "out.jsonl", fmt="trl")) == 5


def test_hh_transcripts_gzip(tmp_path):
    chosen = "\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour.\n\nHuman: then?\n\nAssistant: Bake it."
    rejected = "\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour.\n\nHuman: then?\n\nAssistant: No idea."
    p = tmp_path / "hh.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")
    assert detect_format(p) == "hh"
    (e,) = read_preferences(p)
    assert e.prompt.endswith("\n\nHuman: then?\n\nAssistant:")
    assert e.texts_in_rank_order()[0] == [" Bake it.", " No idea."]
    assert split_hh(chosen, rejected)[0] == e.prompt


def test_hh_real_rows(hh_path):
    stats = ReadStats()
    rows = read_preferences(hh_path / "helpful-base/test.jsonl.gz", skip_invalid=True, stats=stats)
    assert stats.rows == 2354 and len(rows) + stats.skipped == stats.rows
    assert 1 <= stats.skipped <= 20  # chosen == rejected (2 rows) and a few empty responses
    assert all(r.prompt.endswith("\n\nAssistant:") for r in rows[:50])
    with pytest.raises(DataError, match=r"helpful-base/test.jsonl.gz:\d+: .*"):
        read_preferences(hh_path / "helpful-base/test.jsonl.gz")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad, msg", [
    (row(ranking=["b", "a", "z"]), "unknown candidate"),
    (row(ranking=["b", "a", "a"]), "more than once"),
    (row(candidates=[{"id": "a", "text": "A"}, {"id": "a", "text": "B"}], ranking=["a"]), "K >= 2|repeated"),
    (row(candidates=[{"id": "a", "text": "A"}], ranking=["a"]), "K >= 2"),
    (row(candidates=[{"id": "a", "text": " "}, {"id": "b", "text": "B"}], ranking=["a", "b"]), "empty"),
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}', "equals"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}', "finite"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}', "margin must be a number"),
    (b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "b"}', "not valid UTF-8"),
    ('{"prompt": "q", "chosen": "a", ', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
])
def test_bad_row_names_file_and_line(tmp_path, bad, msg):
    first = row() if "candidates" in str(bad) or "ranking" in str(bad) else '{"prompt": "q", "chosen": "x", "rejected": "y"}'
    p = write_lines(tmp_path / "bad.jsonl", [first, bad, first])
    fmt = "rankings" if first == row() else "trl"
    with pytest.raises(DataError, match=msg) as e:
        read_preferences(p, fmt=fmt)
    assert str(e.value).startswith(f"{p}:2: ") and e.value.line == 2
    stats = ReadStats()
    assert len(read_preferences(p, fmt=fmt, skip_invalid=True, stats=stats)) == 2
    assert stats.rows == 3 and stats.skipped == 1 and ":2:" in stats.reasons[0]


def test_truncated_gzip_is_reported(tmp_path):
    p = tmp_path / "r.jsonl.gz"
    payload = gzip.compress(("\n".join(row(prompt_id=f"p{i}") for i in range(200)) + "\n").encode())
    p.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="gzip stream is truncated") as e:
        read_preferences(p, fmt="rankings")
    assert str(e.value).startswith(str(p)) and e.value.line is not None
    with pytest.raises(DataError, match="gzip"):  # skipping rows cannot skip a broken stream
        read_preferences(p, fmt="rankings", skip_invalid=True)


def test_missing_empty_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="file is empty"):
        detect_format(write_lines(tmp_path / "e.jsonl", [""]))
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format(write_lines(tmp_path / "u.jsonl", ['{"text": "hi"}']))


def test_prompts_ids(tmp_path):
    p = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}', '{"id": "x", "messages": [{"role": "user", "content": "b"}]}'])
    a, b = read_prompts(p)
    assert (a.id, a.text, b.id) == ("1", "a", "x")
    with pytest.raises(DataError, match="more than once"):
        read_prompts(write_lines(tmp_path / "d.jsonl", ['{"id": "x", "text": "a"}', '{"id": "x", "text": "b"}']))


# ---------------------------------------------------------------- line separators inside text

# Characters str.splitlines() breaks at, and json.dumps(ensure_ascii=False) leaves raw inside a
# string (the ASCII ones it escapes). JSON Lines ends a line at "\n" only.
SEPARATORS = "a\u2028b\u2029c\u0085d\x0be\x0cf\x1cg\x1dh\x1ei\rj"


def separator_records():
    from rankloop.records import Candidate, Prompt

    prompts = [Prompt(id="p\u2028", text="prompt " + SEPARATORS), Prompt(id="p2", text="plain")]
    cands = [Candidate(id=f"c{j}", prompt_id=p.id, text=f"answer {j} {SEPARATORS}") for p in prompts for j in range(2)]
    cands = [c.model_copy(update={"id": f"{c.prompt_id}-{c.id}"}) for c in cands]
    return prompts, cands


def test_writer_output_reads_back_with_line_separators_in_text(tmp_path):
    prompts, cands = separator_records()
    assert write_jsonl(tmp_path / "prompts.jsonl", prompts) == 2
    assert write_jsonl(tmp_path / "candidates.jsonl", cands) == 4
    raw = (tmp_path / "candidates.jsonl").read_bytes()
    assert raw.count(b"\n") == 4 and len(raw.decode("utf-8").splitlines()) == 4  # safe for splitlines() readers too
    assert read_prompts(tmp_path / "prompts.jsonl") == prompts
    assert read_candidates(tmp_path / "candidates.jsonl") == cands
    line = jsonl_line({"t": SEPARATORS + "é"})
    assert json.loads(line) == {"t": SEPARATORS + "é"} and len(line.splitlines()) == 1 and "é" in line
    ex = RankedExample(prompt_id="p", prompt="q " + SEPARATORS, ranking=Ranking(prompt_id="p", order=["a", "b"]),
                       candidates=[CandidateText(id="a", text="x" + SEPARATORS), CandidateText(id="b", text="y")])
    write_rankings(tmp_path / "r.jsonl", [ex])
    assert [e.to_row() for e in read_preferences(tmp_path / "r.jsonl")] == [ex.to_row()]


def test_reader_splits_only_at_newline(tmp_path):
    """Files from other writers (plain json.dumps, ensure_ascii=False) hold these characters raw."""
    prompts, cands = separator_records()
    p = write_lines(tmp_path / "c.jsonl", [json.dumps(c.model_dump(mode="json"), ensure_ascii=False) for c in cands])
    assert "\u2028" in p.read_text(encoding="utf-8")
    assert read_candidates(p) == cands
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert read_candidates(gz) == cands
    assert [n for n, _ in jsonl_lines(p.read_bytes())][:4] == [1, 2, 3, 4]
    assert [line for _, line in jsonl_lines("a\u2028b\n\u0085\r\n")] == ["a\u2028b", "\u0085\r", ""]


def test_importer_reads_line_separators(tmp_path):
    """The labeling importer: the CLI's read_files and the app's JSONL upload, into a real SQLite."""
    from fastapi.testclient import TestClient

    from rankloop.labeling.app import create_app
    from rankloop.labeling.client import LabelingClient
    from rankloop.labeling.db import dispose
    from rankloop.labeling.importer import read_files

    prompts, cands = separator_records()
    raw = tmp_path / "raw.jsonl"  # combined rows, written by another tool: separators raw
    write_lines(raw, [json.dumps({"prompt_id": p.id, "prompt": p.text,
                                  "candidates": [{"id": c.id, "text": c.text} for c in cands if c.prompt_id == p.id]},
                                 ensure_ascii=False) for p in prompts])
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    write_jsonl(tmp_path / "candidates.jsonl", cands)
    ps, cs, _ = read_files(tmp_path / "candidates.jsonl", tmp_path / "prompts.jsonl")
    assert [p.text for p in ps] == [p.text for p in prompts] and [c.text for c in cs] == [c.text for c in cands]
    ps, cs, _ = read_files(raw)
    assert [p.text for p in ps] == [p.text for p in prompts] and [c.text for c in cs] == [c.text for c in cands]

    app = create_app(f"sqlite:///{tmp_path / 'labels.db'}", admin=("admin", "admin-password"))
    try:
        with TestClient(app) as tc:
            admin = LabelingClient(tc)
            admin.login("admin", "admin-password")
            pid = admin.create_project("seps", k=2)["id"]
            r = tc.post(f"/api/projects/{pid}/import-files", headers={"Authorization": f"Bearer {admin.token}"},
                        files={"candidates": ("raw.jsonl", raw.read_bytes())})
            assert r.status_code == 200, r.text
            assert r.json()["items"] == 2
            seen = {}
            while (t := admin.next_task(pid)) is not None:
                seen[t["prompt_id"]] = (t["prompt"], sorted(c["text"] for c in t["candidates"]))
                admin.submit(t["task_id"], [[c["id"]] for c in t["candidates"]])
            assert seen == {p.id: (p.text, sorted(c.text for c in cands if c.prompt_id == p.id)) for p in prompts}
    finally:
        dispose(app.state.engine)
