"""`rankloop serve/export` and the `rankloop labeling` helpers, through typer's runner."""

import json

import typer
from typer.testing import CliRunner

from rankloop.io import read_preferences
from rankloop.labeling.cli import register


def make_app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_admin_helpers_import_and_export(tmp_path, sqlite_url):
    from fastapi.testclient import TestClient

    from rankloop.labeling.app import create_app
    from rankloop.labeling.client import LabelingClient

    run = CliRunner().invoke
    app = make_app()
    db = ["--database-url", sqlite_url]
    assert run(app, ["labeling", "create-user", "boss", "--role", "admin", "--password", "boss-password", *db]).exit_code == 0
    assert run(app, ["labeling", "create-user", "ann", "--password", "ann-password", *db]).exit_code == 0
    assert run(app, ["labeling", "create-project", "cli", "--k", "2", "--overlap", "1", *db]).exit_code == 0
    (tmp_path / "prompts.jsonl").write_text('{"id": "p1", "text": "hello"}\n')
    (tmp_path / "candidates.jsonl").write_text('{"id": "a", "prompt_id": "p1", "text": "A"}\n{"id": "b", "prompt_id": "p1", "text": "B"}\n')
    r = run(app, ["labeling", "import", "cli", str(tmp_path / "candidates.jsonl"), "--prompts", str(tmp_path / "prompts.jsonl"), *db])
    assert r.exit_code == 0 and json.loads(r.output)["items"] == 1
    assert run(app, ["labeling", "add-member", "cli", "ann", *db]).exit_code == 0
    with TestClient(create_app(sqlite_url)) as tc:
        ann = LabelingClient(tc)
        ann.login("ann", "ann-password")
        t = ann.next_task()
        ann.submit(t["task_id"], [["b"], ["a"]])
    r = run(app, ["export", "cli", "-o", str(tmp_path / "r.jsonl"), "--trl", str(tmp_path / "t.jsonl"), *db])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rankings_exported"] == 1
    (row,) = read_preferences(tmp_path / "r.jsonl")
    assert row.ranking.order == [["b"], ["a"]] and row.ranking.labeler == "ann"
    assert json.loads((tmp_path / "t.jsonl").read_text()) == {"prompt": "hello", "chosen": "B", "rejected": "A"}
    r = run(app, ["export", "missing", *db])
    assert r.exit_code == 2 and "no project 'missing'" in r.output
    r = run(app, ["serve", "--workers", "2", *db])
    assert r.exit_code != 0 and "one process" in r.output


def test_ordinary_mistakes_are_one_line_and_exit_2(tmp_path, sqlite_url):
    """Issue 11 item 14: a duplicate project, an unknown member, a short password, a bad role,
    `--k 40`, an unknown project: one clear line on stderr and exit code 2, no traceback."""
    run = CliRunner().invoke
    app = make_app()
    db = ["--database-url", sqlite_url]
    assert run(app, ["labeling", "create-project", "p", *db]).exit_code == 0
    assert run(app, ["labeling", "create-user", "ann", "--password", "ann-password", *db]).exit_code == 0
    cases = {
        "duplicate project": (["labeling", "create-project", "p"], "a project named 'p' already exists"),
        "duplicate user": (["labeling", "create-user", "ann", "--password", "ann-password"], "user 'ann' already exists"),
        "unknown member": (["labeling", "add-member", "p", "nobody"], "no user 'nobody'"),
        "unknown project": (["labeling", "add-member", "nope", "ann"], "no project 'nope' (projects: p)"),
        "short password": (["labeling", "create-user", "bob", "--password", "short"], "password: String should have at least 8"),
        "bad role": (["labeling", "create-user", "bob", "--password", "bob-password", "--role", "boss"], "role: Input should be"),
        "k too big": (["labeling", "create-project", "q", "--k", "40"], "k: Input should be less than or equal to 16"),
        "missing file": (["labeling", "import", "p", str(tmp_path / "none.jsonl")], "No such file"),
    }
    for what, (args, message) in cases.items():
        r = run(app, [*args, *db])
        assert r.exit_code == 2, (what, r.exit_code, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (what, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (what, r.exception)
