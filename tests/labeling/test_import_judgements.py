"""Importing judgements made elsewhere (issue 15 item 2): a multi-rater pairwise set with ties,
strengths, swapped sides and repeats, checked against figures computed here from scratch (no call
into rankloop.labeling.quality or stats); rankings, TRL and HH-RLHF files; the queue left intact;
bad input refused whole, named by file and line; the CLI; the admin page's upload in Chromium."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations

import pytest
from labhelp import ADMIN, labeler, make_records

from rankloop.labeling.client import LabelingError


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


# ---------------------------------------------------------------- a real multi-rater set, and its figures by hand

PROMPTS = {f"q{i}": f"Question {i}: which answer is more helpful?" for i in range(6)}
ANSWERS = {q: [f"{q} answer one", f"{q} answer two", f"{q} answer three"] for q in PROMPTS}
MODELS = ["model-x", "model-y", "model-z"]


def multi_rater_rows() -> list[dict]:
    """Five raters; each prompt's first two answers judged by three or four of them (some with the
    sides swapped), q0 also its answers 1-3 and 2-3; ties; strengths 1-3; r1 repeats q0 and q1
    (once the same, once changed), r2 repeats q2 three times."""
    # (prompt, answers i, j as a and b, winner, rater, strength, minute)
    spec = [
        ("q0", 0, 1, "a", "r1", 3, 0), ("q0", 0, 1, "a", "r2", 2, 1), ("q0", 1, 0, "b", "r3", 1, 2), ("q0", 0, 1, "b", "r4", 1, 3),
        ("q0", 0, 2, "a", "r1", 2, 4), ("q0", 2, 0, "tie", "r2", None, 5), ("q0", 0, 2, "a", "r5", 1, 6),
        ("q0", 1, 2, "b", "r3", 2, 7), ("q0", 1, 2, "tie", "r4", None, 8),
        ("q1", 0, 1, "b", "r1", 1, 9), ("q1", 0, 1, "b", "r2", 3, 10), ("q1", 1, 0, "a", "r5", 2, 11),
        ("q2", 0, 1, "tie", "r2", None, 12), ("q2", 0, 1, "a", "r3", 1, 13), ("q2", 0, 1, "tie", "r4", None, 14),
        ("q2", 1, 0, "tie", "r5", None, 15),
        ("q3", 0, 1, "a", "r1", 3, 16), ("q3", 1, 0, "a", "r3", 2, 17), ("q3", 0, 1, "b", "r5", 1, 18),
        ("q4", 0, 1, "a", "r2", 1, 19), ("q4", 0, 1, "a", "r4", 2, 20), ("q4", 1, 0, "b", "r5", 3, 21),
        ("q5", 0, 1, "b", "r1", 2, 22),  # one rater only: in no agreement figure
        # repeats, later in time: r1 on q0 (0,1) the same, r1 on q1 changed, r2 on q2 twice more
        ("q0", 1, 0, "b", "r1", 2, 30), ("q1", 0, 1, "a", "r1", 1, 31), ("q2", 0, 1, "a", "r2", 1, 32),
        ("q2", 1, 0, "tie", "r2", None, 33),
    ]
    rows = []
    for q, i, j, winner, rater, strength, minute in spec:
        row = {"prompt": PROMPTS[q], "response_a": ANSWERS[q][i], "response_b": ANSWERS[q][j], "winner": winner,
               "rater": rater, "timestamp": f"2025-03-01T10:{minute:02d}:00Z", "model_a": MODELS[i], "model_b": MODELS[j]}
        if strength is not None:
            row["strength"] = strength
        rows.append(row)
    return rows


def by_hand(rows: list[dict]) -> dict:
    """The figures, from the rows alone. An item is a prompt's unordered pair of answers; a rater's
    judgement is its relation on the pair (texts sorted): -1 first better, 0 tie, +1 second better;
    between raters only each rater's earliest judgement counts, repeats go to self-agreement.
    Krippendorff's α (2011), ordinal, units (item, answer), value the answer's mid-rank (winner 1,
    loser 2, both 1.5 on a tie), computed from the pairable values directly (not a coincidence matrix):
    α = 1 - (n-1) Σ_u Σ_{i≠j in u} δ²/(m_u - 1) / Σ_{all i≠j pairable} δ², ordinal δ² from the value frequencies."""
    judged: dict[tuple, list] = defaultdict(list)  # item → [(time, rater, relation)]
    for r in rows:
        first, second = sorted([r["response_a"], r["response_b"]])
        win = {"a": r["response_a"], "b": r["response_b"], "tie": None}[r["winner"]]
        rel = 0 if win is None else (-1 if win == first else 1)
        judged[(r["prompt"], first, second)].append((r["timestamp"], r["rater"], rel))
    first_of: dict[tuple, dict[str, int]] = {}
    repeats: dict[str, list[list[int]]] = defaultdict(list)
    for item, js in judged.items():
        per_rater: dict[str, list[int]] = defaultdict(list)
        for _t, rater, rel in sorted(js):
            per_rater[rater].append(rel)
        first_of[item] = {rater: rels[0] for rater, rels in per_rater.items()}
        for rater, rels in per_rater.items():
            if len(rels) > 1:
                repeats[rater].append(rels)
    agree = total = 0
    for rels in first_of.values():
        for x, y in combinations(list(rels.values()), 2):
            total += 1
            agree += x == y
    self_agree = self_total = 0
    for groups in repeats.values():
        for rels in groups:
            for x, y in combinations(rels, 2):
                self_total += 1
                self_agree += x == y
    # α: each item gives two units (its first and its second answer)
    units = []
    for rels in first_of.values():
        if len(rels) < 2:
            continue
        units.append([1.0 if v == -1 else 2.0 if v == 1 else 1.5 for v in rels.values()])  # the first answer's mid-rank
        units.append([2.0 if v == -1 else 1.0 if v == 1 else 1.5 for v in rels.values()])  # the second's
    pool = [v for u in units for v in u]
    n = len(pool)
    freq = {v: pool.count(v) for v in set(pool)}

    def d2(c: float, k: float) -> float:
        lo, hi = min(c, k), max(c, k)
        return (sum(f for g, f in freq.items() if lo <= g <= hi) - (freq[c] + freq[k]) / 2) ** 2

    observed = sum(d2(u[i], u[j]) / (len(u) - 1) for u in units for i in range(len(u)) for j in range(len(u)) if i != j)
    expected = sum(d2(pool[i], pool[j]) for i in range(n) for j in range(n) if i != j)
    alpha = 1 - (n - 1) * observed / expected
    # consensus (Borda): the answer with the lower mean mid-rank over first judgements; equal: tie
    consensus = {}
    for (prompt, first, second), rels in first_of.items():
        mean_first = sum(1.0 if v == -1 else 2.0 if v == 1 else 1.5 for v in rels.values()) / len(rels)
        consensus[(prompt, first, second)] = ("tie" if abs(mean_first - 1.5) < 1e-12 else first if mean_first < 1.5 else second,
                                             len(judged[(prompt, first, second)]))
    return {"agreement": agree / total, "alpha": alpha, "items_multi": sum(len(r) >= 2 for r in first_of.values()),
            "self_agreement": self_agree / self_total, "repeat_items": sum(len(g) for g in repeats.values()),
            "self_by_rater": {r: sum(x == y for rels in g for x, y in combinations(rels, 2))
                              / sum(1 for rels in g for _ in combinations(rels, 2)) for r, g in repeats.items()},
            "consensus": consensus, "items": len(judged)}


def test_multi_rater_set_figures_match_an_independent_computation(admin, tc):
    rows = multi_rater_rows()
    want = by_hand(rows)
    assert 0 < want["agreement"] < 1 and 0 < want["alpha"] < 1 and want["repeat_items"] == 3  # the set is not trivial
    p = admin.create_project("replay", mode="pairwise", overlap=3)
    out = admin.import_judgements(p["id"], jsonl(rows), "arena.jsonl")
    assert out["judgements"] == len(rows) == out["rows"]  # every one stored (not ~2%: no slot stands in the way)
    assert out["skipped"] == 0 and out["raters"] == out["raters_new"] == 5 and out["repeats"] == 4
    assert out["items"] == out["items_judged"] == want["items"] and out["prompts"] == 6 and out["candidates"] == 3 + 5 * 2
    agr = admin.agreement(p["id"])
    assert agr["items_multi"] == want["items_multi"]
    assert agr["pairwise_agreement"] == pytest.approx(want["agreement"], abs=1e-12)
    assert agr["krippendorff_alpha"] == pytest.approx(want["alpha"], abs=1e-12)
    assert agr["repeat_items"] == want["repeat_items"]
    assert agr["self_agreement"] == pytest.approx(want["self_agreement"], abs=1e-12)
    labelers = {l["username"]: l for l in admin.progress(p["id"])["labelers"]}
    assert set(labelers) == {"r1", "r2", "r3", "r4", "r5"} and all(l["external"] for l in labelers.values())
    assert sum(l["imported"] for l in labelers.values()) == len(rows)
    for r, s in want["self_by_rater"].items():
        assert labelers[r]["self_agreement"] == pytest.approx(s, abs=1e-12)
    assert labelers["r3"]["self_agreement"] is None and labelers["r3"]["repeat_items"] == 0
    # consensus: per item, the winner by mean mid-rank of each rater's first judgement
    texts = {}  # (prompt id, candidate id) → candidate, from the export (the ids are the importer's)
    exported = [json.loads(line) for line in admin.export(p["id"]).splitlines()]
    assert len(exported) == len(rows)  # raw rows: repeats included
    for e in exported:
        for c in e["candidates"]:
            texts[(e["prompt_id"], c["id"])] = c
    for c in admin.consensus(p["id"]):
        a, b = sorted(texts[(c["prompt_id"], i)]["text"] for g in c["consensus"] for i in g)
        prompt = next(e["prompt"] for e in exported if e["prompt_id"] == c["prompt_id"])
        winner, n = want["consensus"][(prompt, a, b)]
        assert c["rankings"] == n
        if winner == "tie":
            assert len(c["consensus"]) == 1
        else:
            assert texts[(c["prompt_id"], c["consensus"][0][0])]["text"] == winner
    # the model of every candidate, the strength, rater and time of every judgement: kept and exported
    model_of = {(r["prompt"], r["response_a"]): r["model_a"] for r in rows} | {(r["prompt"], r["response_b"]): r["model_b"]
                                                                            for r in rows}
    for e in exported:
        assert all(c["policy"] == model_of[(e["prompt"], c["text"])] for c in e["candidates"])
    by_source = {r["source"]: r for r in admin.rankings(p["id"])}
    for line, row in enumerate(rows, start=1):
        got = by_source[f"arena.jsonl:{line}"]
        assert got["labeler"] == row["rater"] and got["strength"] == row.get("strength")
        assert got["created_at"].replace("+00:00", "Z").startswith(row["timestamp"][:19])
        assert (len(got["order"]) == 1) == (row["winner"] == "tie")
    assert sorted((e["labeler"], e.get("strength", 0)) for e in exported) == sorted((r["rater"], r.get("strength", 0))
                                                                                     for r in rows)


def test_imports_leave_the_queue_alone_and_meet_collected_rankings(admin, tc):
    """Imported rankings on items that also have collected ones: one agreement over both; the
    project's open places are neither filled nor consumed; an imported rater cannot log in."""
    p = admin.create_project("mixed", k=3, overlap=2)
    prompts, cands = make_records(3, 3)
    admin.import_candidates(p["id"], prompts, cands)
    ann, bob = labeler(tc, admin, "ann", p["id"]), labeler(tc, admin, "bob", p["id"])
    t = ann.next_task(p["id"])
    ann.submit(t["task_id"], [[c["id"]] for c in sorted(t["candidates"], key=lambda c: c["id"])])
    first_item = t["prompt_id"]
    text = {c.id: c.text for c in cands}
    # the same prompt judged elsewhere by two raters, in the rankings format (candidate ids differ)
    prompt = next(x for x in prompts if x.id == first_item)
    ids = [c.id for c in cands if c.prompt_id == first_item]
    ext = [{"prompt_id": first_item, "prompt": prompt.text, "labeler": who,
            "candidates": [{"id": f"x{n}", "text": text[i], "policy": "old-policy"} for n, i in enumerate(ids)],
            "ranking": order, "created_at": "2024-01-01T00:00:00+00:00", "strength": 2}
           for who, order in (("v1", [["x0"], ["x1", "x2"]]), ("v2", [["x2"], ["x0"], ["x1"]]))]
    before = admin.progress(p["id"])
    out = admin.import_judgements(p["id"], jsonl(ext), "vendor.jsonl", rater_prefix="vendor/")
    assert out["items"] == 0 and out["candidates"] == 0 and out["items_judged"] == 1  # matched by prompt and text
    after = admin.progress(p["id"])
    assert (after["slots"], after["slots_done"], after["items_complete"]) == (before["slots"], before["slots_done"],
                                                                             before["items_complete"])
    assert after["rankings"] == before["rankings"] + 2
    # by hand: ann c0>c1>c2; vendor/v1 c0>(c1=c2); vendor/v2 c2>c0>c1 (ids: prompt's c0, c1, c2)
    rel = {"ann": {(0, 1): -1, (0, 2): -1, (1, 2): -1}, "v1": {(0, 1): -1, (0, 2): -1, (1, 2): 0},
           "v2": {(0, 1): -1, (0, 2): 1, (1, 2): 1}}
    pairs = [(x, y) for a, b in combinations(rel, 2) for x, y in ((rel[a][k], rel[b][k]) for k in rel[a])]
    assert admin.agreement(p["id"])["pairwise_agreement"] == pytest.approx(sum(x == y for x, y in pairs) / len(pairs))
    (cons,) = [c for c in admin.consensus(p["id"]) if c["prompt_id"] == first_item]
    # mean mid-ranks: c0 (1 + 1 + 2)/3, c1 (2 + 2.5 + 3)/3, c2 (3 + 2.5 + 1)/3 → c0 > c2 > c1
    assert cons["consensus"] == [[ids[0]], [ids[2]], [ids[1]]] and cons["rankings"] == 3
    # every open place is still served, to both real labelers, whatever was imported
    served = 0
    for who in (ann, bob):
        while (task := who.next_task(p["id"])) is not None:
            who.submit(task["task_id"], [[c["id"]] for c in task["candidates"]])
            served += 1
    assert served + 1 == 3 * 2 and admin.progress(p["id"])["items_complete"] == 3
    # the external rater's account: marked, inactive, no way in
    users = {u["username"]: u for u in tc.get("/api/users", headers={"Authorization": f"Bearer {admin.token}"}).json()}
    assert users["vendor/v1"]["active"] is False and users["vendor/v1"]["external"] is True and not users["ann"]["external"]
    for pw in ("", "imported", "vendor/v1"):
        assert tc.post("/api/auth/login", json={"username": "vendor/v1", "password": pw}).status_code in (401, 403, 422)
    # a rater named like a real account is refused, not merged into it
    with pytest.raises(LabelingError) as e:
        admin.import_judgements(p["id"], jsonl([{**ext[0], "labeler": "ann"}]), "again.jsonl")
    assert e.value.status == 422 and "again.jsonl:1" in str(e.value.detail) and "'ann'" in str(e.value.detail)


def test_trl_and_hh_rows_with_margin_and_open_slots(admin, tc):
    p = admin.create_project("pairs", mode="pairwise", overlap=2)
    trl = [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away.", "margin": 1.5},
           {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away.", "rater": "t2"},
           {"prompt": "Add 2+2", "chosen": "4", "rejected": "5"}]
    out = admin.import_judgements(p["id"], jsonl(trl), "trl.jsonl", open_slots=True)
    assert (out["judgements"], out["prompts"], out["items"], out["raters"], out["open_slots"]) == (3, 2, 2, 2, 4)
    hh = [{"chosen": "\n\nHuman: Say hi\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi\n\nAssistant: Go away."}]
    out = admin.import_judgements(p["id"], jsonl(hh), "hh.jsonl", default_rater="hh-team")
    assert (out["judgements"], out["prompts"], out["items"]) == (1, 1, 1)  # the HH prompt is the transcript's prefix
    rows = {r["source"]: r for r in admin.rankings(p["id"])}
    assert rows["trl.jsonl:1"]["labeler"] == "imported" and rows["trl.jsonl:2"]["labeler"] == "t2"
    exported = {e["labeler"]: e for e in map(json.loads, admin.export(p["id"]).splitlines()) if e.get("margin") is not None}
    assert exported["imported"]["margin"] == 1.5
    trl_out = [json.loads(line) for line in admin.export(p["id"], format="trl").splitlines()]
    assert {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away.", "margin": 1.5} in trl_out
    # the opened places go to labelers here, and the imported judgements do not use them up
    ann = labeler(tc, admin, "ann", p["id"])
    got = []
    while (task := ann.next_task(p["id"])) is not None:
        got.append(task["prompt_id"])
        ann.submit(task["task_id"], [task["candidates"][0]["id"], task["candidates"][1]["id"]])
    assert len(got) == 2  # one place each on the two new TRL items (the HH item was imported without)
    with pytest.raises(LabelingError) as e:  # the same file twice would count every judgement twice
        admin.import_judgements(p["id"], jsonl(trl), "renamed.jsonl")
    assert e.value.status == 409 and "already imported" in e.value.detail


def test_bad_rows_name_file_and_line_and_nothing_is_half_imported(admin, tc):
    p = admin.create_project("strict", mode="pairwise")
    good = {"prompt": "P", "response_a": "A", "response_b": "B", "winner": "a", "rater": "r1"}
    rows = [json.dumps(good), json.dumps({**good, "winner": "left"}), "{not json", json.dumps({**good, "strength": "big"}),
            json.dumps({**good, "response_b": "A"}), json.dumps({**good, "timestamp": "yesterday"}),
            json.dumps({**good, "rater": "x" * 80}), json.dumps({**good, "rater": "r2"})]
    data = ("\n".join(rows) + "\n").encode()
    with pytest.raises(LabelingError) as e:
        admin.import_judgements(p["id"], data, "bad.jsonl")
    detail = e.value.detail
    assert e.value.status == 422 and "6 bad row(s), nothing imported" in detail
    for line in (2, 3, 4, 5, 6, 7):
        assert f"bad.jsonl:{line}:" in detail
    assert "winner" in detail and "not valid JSON" in detail and "strength" in detail
    assert "bad.jsonl:1:" not in detail and "bad.jsonl:8:" not in detail
    assert admin.rankings(p["id"]) == [] and admin.progress(p["id"])["items"] == 0
    names = {u["username"] for u in tc.get("/api/users", headers={"Authorization": f"Bearer {admin.token}"}).json()}
    assert "r1" not in names and "r2" not in names  # no rater, prompt or item was left behind
    out = admin.import_judgements(p["id"], data, "bad.jsonl", skip_invalid=True)
    assert (out["judgements"], out["skipped"], out["rows"]) == (2, 6, 8) and out["errors"][0].startswith("bad.jsonl:2:")
    # the wrong number of candidates for the project; an empty file; an unknown format
    ranking_project = admin.create_project("k3", k=3)
    with pytest.raises(LabelingError) as e:
        admin.import_judgements(ranking_project["id"], jsonl([good]), "k.jsonl")
    assert "k.jsonl:1: 2 candidates, but project 'k3' shows 3 per item" in e.value.detail
    with pytest.raises(LabelingError) as e:
        admin.import_judgements(p["id"], b"\n\n", "empty.jsonl")
    assert "empty.jsonl: no rows" in e.value.detail
    with pytest.raises(LabelingError) as e:
        admin.import_judgements(p["id"], jsonl([good]), "f.jsonl", format="csv")
    assert e.value.status == 422
    # labelers may not import
    bob = labeler(tc, admin, "bob", p["id"])
    with pytest.raises(LabelingError) as e:
        bob.import_judgements(p["id"], jsonl([good]), "x.jsonl")
    assert e.value.status == 403


def test_cli_import_judgements(tmp_path, sqlite_url):
    import typer
    from typer.testing import CliRunner

    from rankloop.labeling.cli import register

    app = typer.Typer()
    register(app)
    run = CliRunner().invoke
    db = ["--database-url", sqlite_url]
    assert run(app, ["labeling", "create-project", "cli", "--mode", "pairwise", *db]).exit_code == 0
    f = tmp_path / "judged.jsonl"
    f.write_bytes(jsonl(multi_rater_rows()))
    r = run(app, ["labeling", "import-judgements", "cli", str(f), "--format", "pairwise", *db])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["judgements"] == len(multi_rater_rows())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    r = run(app, ["labeling", "import-judgements", "cli", str(bad), "--format", "trl", *db])
    assert r.exit_code == 2 and "bad.jsonl:1:" in r.output and "Traceback" not in r.output
    r = run(app, ["export", "cli", "-o", str(tmp_path / "r.jsonl"), *db])
    assert r.exit_code == 0 and json.loads(r.output)["rankings_exported"] == len(multi_rater_rows())
    from rankloop.io import read_preferences

    rows = read_preferences(tmp_path / "r.jsonl")  # the trainers' reader takes the export, policies and strengths too
    assert {c.policy for e in rows for c in e.candidates} == set(MODELS)
    assert {e.ranking.strength for e in rows} == {None, 1, 2, 3}


@pytest.mark.browser
def test_admin_uploads_judgements_in_the_browser(tmp_path):
    import os
    import shutil
    from pathlib import Path

    from labhelp import ARTIFACTS, free_port, start_server

    from rankloop.labeling.client import LabelingClient

    chromium = os.environ.get("RANKLOOP_CHROMIUM", "/usr/bin/chromium")
    if not (Path(chromium).exists() or shutil.which(chromium)):
        pytest.skip(f"no chromium at {chromium}; never downloading one")
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_server(f"sqlite:///{tmp_path / 'labels.db'}", port, tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        admin = LabelingClient(base)
        admin.login(*ADMIN)
        p = admin.create_project("upload", mode="pairwise")
        good = tmp_path / "judged.jsonl"
        rows = multi_rater_rows()
        rows[0]["rater"] = "<b>evil</b>"  # a rater name is text, never markup
        good.write_bytes(jsonl(rows))
        bad = tmp_path / "broken.jsonl"
        bad.write_text(json.dumps(rows[1]) + "\n" + '{"prompt": "p", "response_a": "a"}\n')
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=chromium, headless=True,
                                   args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = b.new_page()
            page.goto(f"{base}/login")
            page.fill("input[name=username]", ADMIN[0])
            page.fill("input[name=password]", ADMIN[1])
            page.click("button[type=submit]")
            page.goto(f"{base}/admin/projects/{p['id']}")
            form = page.locator("#import-judgements")
            form.locator("input[name=file]").set_input_files(str(bad))
            form.locator("button[type=submit]").click()
            assert "broken.jsonl:2:" in page.content() and "nothing imported" in page.content()
            assert admin.rankings(p["id"]) == []
            form = page.locator("#import-judgements")
            form.locator("input[name=file]").set_input_files(str(good))
            form.locator("select[name=format]").select_option("pairwise")
            form.locator("button[type=submit]").click()
            page.wait_for_selector("text=imported 27 judgements")
            assert "&lt;b&gt;evil&lt;/b&gt;" in page.content() and page.locator("#labelers b").count() == 0
            assert page.locator("#labelers").inner_text().count("(external)") == 6  # r1-r5 and the markup-named one
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "import-judgements.png"), full_page=True)
            b.close()
        assert len(admin.rankings(p["id"])) == len(rows)
    finally:
        proc.kill()
        proc.wait(10)


def test_migration_0007_upgrades_a_0002_database_with_data(db_url):
    """Existing accounts become non-external and existing rankings have no strength or provenance;
    the downgrade drops the three columns again."""
    from alembic import command
    from sqlalchemy import inspect, text

    from labhelp import OLD_NOW as now, database_at, seed_answered_slot

    cfg, engine = database_at(db_url, "0002")
    with engine.begin() as c:
        seed_answered_slot(c, "ranking")
        c.execute(text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                       f"idempotency_key, is_gold, created_at) VALUES (1, 1, 1, 1, '[]', false, false, 'k', false, '{now}')"))
    command.upgrade(cfg, "0007")
    with engine.begin() as c:
        assert c.execute(text("SELECT external FROM users")).scalar_one() in (False, 0)
        assert tuple(c.execute(text("SELECT strength, import_meta FROM rankings")).one()) == (None, None)
    command.downgrade(cfg, "0002")
    assert "external" not in {col["name"] for col in inspect(engine).get_columns("users")}
    assert {"strength", "import_meta"}.isdisjoint(col["name"] for col in inspect(engine).get_columns("rankings"))
    engine.dispose()
