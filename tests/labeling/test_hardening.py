"""Issue 11 (hardening), the labeling app's items: each an HTTP test against the real app (SQLite and
PostgreSQL through the ``db_url`` fixture), named after the item it keeps fixed."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
from sqlalchemy import select, update

from rankloop.labeling.client import LabelingClient, LabelingError
from rankloop.labeling.models import AuthToken, Project, Slot
from labhelp import ADMIN, best_first, labeler, make_records


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def page_login(tc, username: str, password: str, **headers):
    token = csrf_of(tc.get("/login").text)
    return tc.post("/login", data={"username": username, "password": password, "csrf_token": token},
                   headers=headers, follow_redirects=False)


def new_client(app, address: str = "testclient", **kw):
    from fastapi.testclient import TestClient

    return TestClient(app, client=(address, 50000), **kw)


@contextmanager
def fresh_app(url: str, **kw):
    """A new app over ``url`` (an empty token cache: what another process sees), closed after."""
    from fastapi.testclient import TestClient

    from rankloop.labeling.app import create_app
    from rankloop.labeling.db import dispose

    app = create_app(url, admin=ADMIN, **kw)
    try:
        with TestClient(app) as tc:
            yield tc
    finally:
        dispose(app.state.engine)


def project_with_tasks(admin, name="proj", n=2, k=2, overlap=1):
    p = admin.create_project(name, k=k, overlap=overlap)
    admin.import_candidates(p["id"], *make_records(n, k, prefix=f"{name}-"))
    return p


# ------------------------------------------------------------------ 1. size limits


def test_item1_oversized_body_is_413_before_login_and_not_echoed(tc):
    big = json.dumps({"username": "admin", "password": "x" * (2 * 1024 * 1024)})
    r = tc.post("/api/auth/login", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 500 and "limit" in r.json()["detail"]
    # without a Content-Length (chunked): counted as it arrives
    r = tc.post("/api/auth/login", content=iter([big[i:i + 65536].encode() for i in range(0, len(big), 65536)]),
                headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 500


def test_item1_string_and_list_fields_are_bounded_and_422s_do_not_echo(tc, admin):
    from rankloop.records import Candidate, Prompt

    p = project_with_tasks(admin, n=1, k=2)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    with pytest.raises(LabelingError) as e:  # a 10 001-character rationale
        a.submit(t["task_id"], best_first(t), rationale="R" * 10_001)
    assert e.value.status == 422 and "RRRR" not in json.dumps(e.value.detail)
    with pytest.raises(LabelingError) as e:  # thousands of unknown ids
        a.submit(t["task_id"], [[f"unknown-{i}"] for i in range(5000)])
    assert e.value.status == 422 and len(json.dumps(e.value.detail)) < 2000
    r = tc.post("/api/projects", json={"name": "N" * 129}, headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 422 and "NNNN" not in r.text and all("input" not in err for err in r.json()["detail"])
    with pytest.raises(LabelingError) as e:  # a prompt over the text limit, inside the import body limit
        admin.import_candidates(p["id"], [Prompt(id="huge", text="P" * 200_001)],
                                [Candidate(id=f"h{i}", prompt_id="huge", text="t") for i in range(2)])
    assert e.value.status == 422 and "'huge'" in e.value.detail and "200000" in e.value.detail
    assert "PPPP" not in e.value.detail
    with pytest.raises(LabelingError) as e:  # an id longer than the column
        admin.import_candidates(p["id"], [Prompt(id="x" * 300, text="p")],
                                [Candidate(id=f"c{i}", prompt_id="x" * 300, text="t") for i in range(2)])
    assert e.value.status == 422 and "255" in e.value.detail and len(e.value.detail) < 500


def test_item1_imports_have_their_own_larger_limit(tc, admin):
    p = admin.create_project("big", k=2)
    rows = [{"prompt_id": f"q{i}", "prompt": "x" * 2000, "candidates": ["a" * 1000, "b" * 1000]} for i in range(400)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert len(body) > 1024 * 1024  # over the general limit
    r = tc.post(f"/api/projects/{p['id']}/import-files", files={"candidates": ("c.jsonl", body)},
                headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 200, r.text[:300]


# ------------------------------------------------------------------ 2. credential changes end sessions


def test_item2_password_reset_and_deactivation_revoke_every_session_and_token(tc, admin, app):
    admin.create_user("ann", "ann-password")
    with new_client(app) as web:
        assert page_login(web, "ann", "ann-password").status_code == 303
        api = LabelingClient(tc)
        api.login("ann", "ann-password")
        script = LabelingClient(tc, token=api.api_token("script"))
        assert web.get("/api/auth/me").status_code == 200 and api.me() and script.me()
        uid = api.me()["id"]
        admin._call("PATCH", f"/api/users/{uid}", json={"password": "new-password"})
        assert web.get("/api/auth/me").status_code == 401
        for c in (api, script):
            with pytest.raises(LabelingError) as e:
                c.me()
            assert e.value.status == 401
        # deactivate, then re-activate: the tokens from before stay dead
        api.login("ann", "new-password")
        script = LabelingClient(tc, token=api.api_token("script"))
        admin._call("PATCH", f"/api/users/{uid}", json={"active": False})
        admin._call("PATCH", f"/api/users/{uid}", json={"active": True})
        for c in (api, script):
            with pytest.raises(LabelingError) as e:
                c.me()
            assert e.value.status == 401
    with app.state.sessionmaker() as db:
        assert db.execute(select(AuthToken.id).where(AuthToken.user_id == uid)).all() == []


# ------------------------------------------------------------------ 3. token expiry, list, revoke


def test_item3_script_tokens_expire_by_default_and_within_a_maximum(tc, admin, app):
    r = admin._call("POST", "/api/auth/tokens", json={"name": "ci"})
    expires = datetime.fromisoformat(r["expires_at"])
    assert timedelta(days=89) < expires - datetime.now(timezone.utc) <= timedelta(days=90)
    r = admin._call("POST", "/api/auth/tokens", json={"name": "short", "days": 1})
    assert datetime.fromisoformat(r["expires_at"]) - datetime.now(timezone.utc) <= timedelta(days=1)
    with pytest.raises(LabelingError) as e:
        admin._call("POST", "/api/auth/tokens", json={"name": "forever", "days": 10_000})
    assert e.value.status == 422 and "365" in json.dumps(e.value.detail)
    short = LabelingClient(tc, token=r["token"])
    assert short.me()["username"] == "admin"
    with app.state.sessionmaker() as db:  # let it run out
        db.execute(update(AuthToken).where(AuthToken.id == r["id"]).values(expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc)))
        db.commit()
    app.state.token_cache.drop(user_id=r["user"]["id"])
    with pytest.raises(LabelingError) as e:
        short.me()
    assert e.value.status == 401


def test_item3_list_and_revoke_tokens_through_the_api(tc, admin):
    admin.create_user("ann", "ann-password")
    ann = LabelingClient(tc)
    ann.login("ann", "ann-password")
    one, two = ann.api_token("one"), ann.api_token("two")
    mine = ann.tokens()
    assert [(t["kind"], t["name"]) for t in mine] == [("api", "login"), ("api", "one"), ("api", "two")]
    assert [t["current"] for t in mine] == [True, False, False]
    assert all("token" not in t and "token_hash" not in t for t in mine)
    ann.revoke_token(mine[1]["id"])
    with pytest.raises(LabelingError) as e:
        LabelingClient(tc, token=one).me()
    assert e.value.status == 401
    assert LabelingClient(tc, token=two).me()["username"] == "ann"
    with pytest.raises(LabelingError) as e:  # someone else's token id is not found, not revoked
        admin.revoke_token(mine[2]["id"])
    assert e.value.status == 404
    # an admin lists and revokes another user's
    uid = ann.me()["id"]
    assert [t["name"] for t in admin._call("GET", f"/api/users/{uid}/tokens")] == ["login", "two"]
    admin._call("DELETE", f"/api/users/{uid}/tokens/{mine[2]['id']}")
    with pytest.raises(LabelingError):
        LabelingClient(tc, token=two).me()
    three, current = ann.api_token("three"), ann.token
    ann.revoke_all_tokens()  # every one, the one in use included
    for tok in (three, current):
        with pytest.raises(LabelingError) as e:
            LabelingClient(tc, token=tok).me()
        assert e.value.status == 401
    ann.login("ann", "ann-password")
    admin._call("DELETE", f"/api/users/{uid}/tokens")
    with pytest.raises(LabelingError):
        ann.me()


def test_item3_tokens_on_the_command_line(sqlite_url):
    from typer.testing import CliRunner

    from test_cli import make_app

    run, cli = CliRunner().invoke, make_app()
    db = ["--database-url", sqlite_url]
    assert run(cli, ["labeling", "create-user", "ann", "--password", "ann-password", *db]).exit_code == 0
    r = run(cli, ["labeling", "tokens", "create", "ann", "--name", "ci", "--days", "30", *db])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    r = run(cli, ["labeling", "tokens", "create", "ann", "--days", "1000", *db])
    assert r.exit_code == 2 and "365" in r.output
    with fresh_app(sqlite_url) as tc:
        assert LabelingClient(tc, token=token).me()["username"] == "ann"
    r = run(cli, ["labeling", "tokens", "list", "--user", "ann", *db])
    assert r.exit_code == 0, r.output
    token_id = re.search(r"^\s*(\d+)\s+ann\s+api\s+ci\b", r.output, re.M).group(1)
    assert run(cli, ["labeling", "tokens", "revoke", token_id, *db]).exit_code == 0
    with fresh_app(sqlite_url) as tc:  # (a running app notices within its token cache's 30 s)
        with pytest.raises(LabelingError) as e:
            LabelingClient(tc, token=token).me()
        assert e.value.status == 401
        again = LabelingClient(tc)
        again.login("ann", "ann-password")
    assert run(cli, ["labeling", "tokens", "revoke-all", "ann", *db]).exit_code == 0
    with fresh_app(sqlite_url) as tc:
        with pytest.raises(LabelingError):
            LabelingClient(tc, token=again.token).me()
    r = run(cli, ["labeling", "tokens", "revoke", "99999", *db])
    assert r.exit_code == 2 and "token 99999" in r.output


def test_item3_tokens_on_the_admin_page(tc, admin, app):
    admin.create_user("ann", "ann-password")
    ann = LabelingClient(tc)
    ann.login("ann", "ann-password")
    script = ann.api_token("nightly")
    with new_client(app) as web:
        page_login(web, *ADMIN)
        page = web.get("/admin")
        assert "nightly" in page.text
        csrf = csrf_of(page.text)
        tid = re.search(r'<tr data-token="(\d+)">(?:(?!</tr>).)*nightly', page.text, re.S).group(1)
        assert web.post(f"/admin/tokens/{tid}/revoke", data={}, follow_redirects=False).status_code == 403  # no CSRF
        r = web.post(f"/admin/tokens/{tid}/revoke", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert "Token revoked" in web.get(r.headers["location"]).text
        with pytest.raises(LabelingError):
            LabelingClient(tc, token=script).me()
        uid = ann.me()["id"]
        r = web.post(f"/admin/users/{uid}/revoke-tokens", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        with pytest.raises(LabelingError):
            ann.me()


# ------------------------------------------------------------------ 4. throttling without lock-outs


def test_item4_a_stranger_cannot_lock_a_known_user_out(app):
    with new_client(app, "203.0.113.5") as stranger, new_client(app, "198.51.100.7") as owner:
        assert LabelingClient(owner).login(*ADMIN)  # the admin's usual address
        statuses = []
        for _ in range(40):
            try:
                LabelingClient(stranger).login("admin", "guess")
            except LabelingError as e:
                statuses.append(e.status)
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}  # the stranger is slowed down
        assert LabelingClient(owner).login(*ADMIN)  # the admin is not
        with new_client(app, "192.0.2.44") as elsewhere:  # nor from a new address, for one user's guesses
            assert LabelingClient(elsewhere).login(*ADMIN)


def test_item4_failures_from_one_address_do_not_lock_out_the_others_behind_it(app):
    with new_client(app, "203.0.113.9") as nat:
        admin = LabelingClient(nat)
        admin.login(*ADMIN)
        admin.create_user("ann", "ann-password")
        assert LabelingClient(nat).login("ann", "ann-password")
        for i in range(12):  # real accounts: checking their (test-cheap) hashes is quick
            admin.create_user(f"user{i}", f"user{i}-password")
        for i in range(120):  # someone behind the same address tries many names
            try:
                LabelingClient(nat).login(f"user{i % 12}", "guess")
            except LabelingError as e:
                assert e.status in (401, 429)
        with pytest.raises(LabelingError) as e:  # the address is hot: a name not seen here before waits
            LabelingClient(nat).login("newcomer", "guess")
        assert e.value.status == 429
        assert LabelingClient(nat).login("ann", "ann-password")  # who logged in from here before still can
        assert LabelingClient(nat).login(*ADMIN)


def test_item4_forwarded_for_is_ignored_unless_the_proxy_is_trusted(sqlite_url):
    from rankloop.labeling.app import create_app
    from rankloop.labeling.settings import LabelingSettings

    for n, (trusted, locked) in enumerate((([], True), (["127.0.0.0/8"], False))):
        app = create_app(sqlite_url.replace("labels.db", f"labels{n}.db"), admin=ADMIN,
                         settings=LabelingSettings(trusted_proxies=trusted))
        with new_client(app, "127.0.0.1") as proxy:
            for _ in range(12):
                proxy.post("/api/auth/login", json={"username": "admin", "password": "guess"},
                           headers={"X-Forwarded-For": "203.0.113.66"})
            r = proxy.post("/api/auth/login", json={"username": "admin", "password": "guess"},
                           headers={"X-Forwarded-For": "203.0.113.66"})
            assert r.status_code == 429
            r = proxy.post("/api/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]},
                           headers={"X-Forwarded-For": "198.51.100.20"})
            assert (r.status_code == 429) is locked, (trusted, r.status_code)
        from rankloop.labeling.db import dispose

        dispose(app.state.engine)


@pytest.mark.slow
def test_item4_rankloop_serve_does_not_trust_forwarded_for_from_loopback(tmp_path):
    """The real server: uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; `rankloop serve`
    must not, or anyone on the machine (or a misconfigured proxy) picks their address."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from labhelp import ROOT, free_port

    port = free_port()
    env = {**os.environ, "RANKLOOP_ADMIN_PASSWORD": ADMIN[1], "PYTHONPATH": str(ROOT)}
    env.pop("RANKLOOP_TRUSTED_PROXIES", None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "rankloop.cli", "serve", "--port", str(port), "--admin-user", ADMIN[0],
                             "--database-url", f"sqlite:///{tmp_path / 'labels.db'}", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        statuses = [httpx.post(f"{base}/api/auth/login", json={"username": "admin", "password": "guess"},
                               headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(12)]
        assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429], statuses
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ------------------------------------------------------------------ 5. no messages from the URL


def test_item5_messages_come_by_code_not_from_the_url(tc, admin, app):
    evil = "Your account is locked: call +1-555-0100"
    r = tc.get("/login", params={"error": evil, "status_code": "0"})
    assert r.status_code == 200 and evil not in r.text
    p = admin.create_project("m", k=2)
    with new_client(app) as web:
        page_login(web, *ADMIN)
        for url in ("/admin", f"/admin/projects/{p['id']}"):
            r = web.get(url, params={"error": evil, "notice": evil})
            assert r.status_code == 200 and evil not in r.text
        assert "Token revoked" in web.get("/admin", params={"notice": "token-revoked"}).text
        assert web.get("/admin", params={"notice": "no-such-code"}).status_code == 200


# ------------------------------------------------------------------ 6. the export file name


def test_item6_export_filename_is_rfc6266_encoded(tc, admin, app):
    names = ["Ünïcödé 日本語", 'say "hi"', "semi;colon\\back"]
    for name in names:
        p = admin.create_project(name, k=2)
        r = tc.get(f"/api/projects/{p['id']}/export", headers={"Authorization": f"Bearer {admin.token}"})
        assert r.status_code == 200
        cd = r.headers["content-disposition"]
        cd.encode("latin-1")  # a valid header value
        ascii_name = re.search(r'filename="([^"]*)"', cd).group(1)
        assert ascii_name.isascii() and '"' not in ascii_name and "\\" not in ascii_name
        star = re.search(r"filename\*=UTF-8''([^;\s]+)", cd).group(1)
        assert unquote(star, encoding="utf-8") == f"{name}-rankings.jsonl"
    with pytest.raises(LabelingError) as e:  # control characters are refused in new names
        admin.create_project("line\r\nbreak", k=2)
    assert e.value.status == 422
    p = admin.create_project("plain", k=2)
    with app.state.sessionmaker() as db:  # and a name stored before that rule still downloads
        db.execute(update(Project).where(Project.id == p["id"]).values(name="line\r\nbreak"))
        db.commit()
    r = tc.get(f"/api/projects/{p['id']}/export", headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 200 and "\r" not in r.headers["content-disposition"] and "\n" not in r.headers["content-disposition"]


# ------------------------------------------------------------------ 7. membership, last admin, login CSRF, headers


def test_item7_a_removed_member_loses_their_held_task(tc, admin):
    p = project_with_tasks(admin, n=1, k=2)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    t = a.next_task()
    admin._call("DELETE", f"/api/projects/{p['id']}/members/{a.me()['id']}")
    with pytest.raises(LabelingError) as e:
        a.submit(t["task_id"], best_first(t))
    assert e.value.status == 404
    assert a.next_task() is None
    tb = b.next_task()  # the slot went back to the queue
    assert tb is not None and tb["task_id"] == t["task_id"]


def test_item7_the_last_admin_cannot_demote_or_deactivate_themselves(tc, admin):
    me = admin.me()["id"]
    for change in ({"role": "labeler"}, {"active": False}):
        with pytest.raises(LabelingError) as e:
            admin._call("PATCH", f"/api/users/{me}", json=change)
        assert e.value.status == 409 and "last" in e.value.detail
    other = admin.create_user("second", "second-password", role="admin")
    admin._call("PATCH", f"/api/users/{me}", json={"role": "labeler"})  # fine: another admin remains
    second = LabelingClient(tc)
    second.login("second", "second-password")
    with pytest.raises(LabelingError) as e:
        second._call("PATCH", f"/api/users/{other['id']}", json={"active": False})
    assert e.value.status == 409


def test_item7_login_csrf_from_another_site_is_refused(app):
    with new_client(app) as web:
        assert page_login(web, *ADMIN, origin="https://evil.example").status_code == 403
        web.cookies.clear()
        assert page_login(web, *ADMIN, **{"sec-fetch-site": "cross-site"}).status_code == 403
        web.cookies.clear()
        assert page_login(web, *ADMIN, origin="http://testserver").status_code == 303


def test_item7_security_headers_on_task_pages_and_api(tc, admin, app):
    p = project_with_tasks(admin, n=1, k=2)
    admin.create_user("web", "web-password")
    admin.add_member(p["id"], "web")
    with new_client(app) as web:
        page_login(web, "web", "web-password")
        page = web.get("/label", follow_redirects=True)
        assert "/label/" in str(page.url)
        assert "no-store" in page.headers["cache-control"]
        assert page.headers["referrer-policy"] == "same-origin"
        assert "strict-transport-security" not in page.headers  # plain HTTP: no HSTS
    r = tc.get("/api/auth/me", headers={"Authorization": f"Bearer {admin.token}"})
    assert "no-store" in r.headers["cache-control"]
    assert "no-store" not in tc.get("/static/style.css").headers.get("cache-control", "")


def test_item7_secure_cookies_use_the_host_prefix_and_hsts(sqlite_url):
    from rankloop.labeling.app import create_app
    from rankloop.labeling.db import dispose

    app = create_app(sqlite_url, admin=ADMIN, secure_cookies=True)
    with new_client(app, base_url="https://testserver") as web:
        login_page = web.get("/login")
        assert any(c.startswith("__Host-rankloop_login_csrf=") and "Secure" in c and "Path=/" in c
                   for c in login_page.headers.get_list("set-cookie"))
        r = page_login(web, *ADMIN)
        session = [c for c in r.headers.get_list("set-cookie") if c.startswith("__Host-rankloop_session=")]
        assert session and "Secure" in session[0] and "Path=/" in session[0] and "Domain" not in session[0]
        page = web.get("/admin")
        assert page.status_code == 200 and "max-age=" in page.headers["strict-transport-security"]
    dispose(app.state.engine)


def test_item7_docs_pages_work_under_their_content_security_policy(tc):
    for path in ("/docs", "/redoc"):
        r = tc.get(path)
        csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";") if " " in d.strip())
        for src in re.findall(r'<script[^>]+src="([^"]+)"', r.text):
            host = re.match(r"https?://[^/]+", src)
            assert host and host.group(0) in csp["script-src"], (path, src, csp["script-src"])
        for body in re.findall(r"<script>(.*?)</script>", r.text, re.S):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp["script-src"], path
        for href in re.findall(r'<link[^>]+href="(https?://[^/"]+)', r.text):
            assert href in csp.get("style-src", "") + csp.get("img-src", ""), (path, href)
    assert "'unsafe-inline'" not in tc.get("/login").headers["content-security-policy"]  # the app's own pages stay strict


# ------------------------------------------------------------------ 8. inputs that gave a 500


def test_item8_huge_ids_are_a_clear_4xx(tc, admin, app):
    huge = "99999999999999999999"
    h = {"Authorization": f"Bearer {admin.token}"}
    for method, url in (("GET", f"/api/tasks/{huge}"), ("POST", f"/api/tasks/{huge}/submit"), ("GET", f"/api/projects/{huge}"),
                        ("PATCH", f"/api/users/{huge}"), ("POST", f"/api/tasks/next?project_id={huge}")):
        r = tc.request(method, url, headers=h, json={"order": ["a"], "idempotency_key": "k"} if "submit" in url else {})
        assert 400 <= r.status_code < 500, (url, r.status_code)
    with new_client(app) as web:
        page_login(web, *ADMIN)
        for url in (f"/label/{huge}", f"/admin/projects/{huge}", f"/label?project_id={huge}"):
            assert 400 <= web.get(url).status_code < 500, url


def test_item8_deeply_nested_input_is_a_clear_4xx(tc, admin, app):
    p = project_with_tasks(admin, n=1, k=2)
    admin.create_user("web", "web-password")
    admin.add_member(p["id"], "web")
    deep = "[" * 100_000 + "]" * 100_000
    with new_client(app) as web:
        page_login(web, "web", "web-password")
        page = web.get("/label", follow_redirects=True)
        task = str(page.url).rsplit("/", 1)[1]
        for order in (deep, "[" * 20_000 + "]" * 20_000):  # over the field's length; under it, too deep to parse
            r = web.post(f"/label/{task}", data={"order": order, "idempotency_key": "k", "csrf_token": csrf_of(page.text)})
            assert r.status_code == 422 and "ranking" in r.text
    web_api = LabelingClient(tc)
    web_api.login("web", "web-password")
    r = tc.post(f"/api/tasks/{task}/submit", content='{"order": ' + deep + ', "idempotency_key": "k"}',
                headers={"Authorization": f"Bearer {web_api.token}", "content-type": "application/json"})
    assert 400 <= r.status_code < 500


def test_item8_bad_uploads_are_a_clear_422(tc, admin, app):
    p = admin.create_project("up", k=2)
    h = {"Authorization": f"Bearer {admin.token}"}

    def upload(body: bytes):
        return tc.post(f"/api/projects/{p['id']}/import-files", files={"candidates": ("rows.jsonl", body)}, headers=h)

    r = upload('{"prompt_id": "q", "prompt": "caf\xe9", "candidates": ["a", "b"]}\n'.encode("latin-1"))
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"] and "rows.jsonl:1" in r.json()["detail"]
    r = upload(b'{"prompt_id": "q", "prompt": "p", "candidates": 5}\n')
    assert r.status_code == 422 and "candidates" in r.json()["detail"] and "list" in r.json()["detail"]
    r = upload(b'{"prompt_id": "q", "prompt": "p", "candidates": "abcd"}\n')
    assert r.status_code == 422 and "list" in r.json()["detail"]
    r = upload(b'{"prompt_id": 0, "prompt": "zero", "candidates": ["a", "b"]}\n')
    assert r.status_code == 200, r.text
    from rankloop.labeling.models import PromptRow

    with app.state.sessionmaker() as db:
        assert db.execute(select(PromptRow.external_id)).scalars().all() == ["0"]
    with new_client(app) as web:  # the admin page too
        page_login(web, *ADMIN)
        page = web.get(f"/admin/projects/{p['id']}")
        r = web.post(f"/admin/projects/{p['id']}/import", data={"csrf_token": csrf_of(page.text)},
                     files={"candidates": ("rows.jsonl", b"\xff\xfe{}\n")})
        assert r.status_code == 422 and "UTF-8" in r.text


# ------------------------------------------------------------------ 12. idempotency keys per project


def test_item12_an_idempotency_key_may_be_reused_in_another_project(tc, admin):
    p1, p2 = project_with_tasks(admin, "one", n=1), project_with_tasks(admin, "two", n=1)
    a = labeler(tc, admin, "a", p1["id"])
    admin.add_member(p2["id"], "a")
    t1 = a.next_task(p1["id"])
    assert a.submit(t1["task_id"], best_first(t1), idempotency_key="row-1")["duplicate"] is False
    t2 = a.next_task(p2["id"])
    out = a.submit(t2["task_id"], best_first(t2), idempotency_key="row-1")
    assert out["duplicate"] is False and out["task_id"] == t2["task_id"]
    assert len(admin.rankings(p2["id"])) == 1


# ------------------------------------------------------------------ 15. small ones


def test_item15_wal_is_checkpointed_back_to_a_small_file(tmp_path, monkeypatch):
    import os
    import time

    from rankloop.labeling import db as dbmod
    from rankloop.labeling.app import create_app
    from rankloop.labeling.db import dispose

    monkeypatch.setattr(dbmod, "WAL_SIZE_LIMIT", 256 * 1024)
    path = tmp_path / "labels.db"
    app = create_app(f"sqlite:///{path}", admin=ADMIN)
    with new_client(app) as tc:
        admin = LabelingClient(tc)
        admin.login(*ADMIN)
        p = admin.create_project("wal", k=2)
        from rankloop.records import Candidate, Prompt

        prompts = [Prompt(id=f"w{i}", text="w" * 2000) for i in range(600)]
        cands = [Candidate(id=f"w{i}-{j}", prompt_id=f"w{i}", text="c" * 1000) for i in range(600) for j in range(2)]
        admin.import_candidates(p["id"], prompts, cands)
        wal = tmp_path / "labels.db-wal"
        assert wal.stat().st_size > 1024 * 1024
        deadline = time.monotonic() + 10
        while wal.exists() and wal.stat().st_size > 256 * 1024 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not wal.exists() or os.path.getsize(wal) <= 256 * 1024
    dispose(app.state.engine)


def test_item15_expired_tokens_are_purged(tc, admin, app):
    for _ in range(3):
        LabelingClient(tc).login(*ADMIN)
    with app.state.sessionmaker() as db:
        n_before = len(db.execute(select(AuthToken.id)).all())
        db.execute(update(AuthToken).where(AuthToken.name == "login", AuthToken.token_hash != _hash(admin.token))
                   .values(expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc)))
        db.commit()
    LabelingClient(tc).login(*ADMIN)
    with app.state.sessionmaker() as db:
        rows = db.execute(select(AuthToken.expires_at)).scalars().all()
    assert len(rows) == 2 < n_before and all(r.year > 2000 for r in rows)


def _hash(token: str) -> str:
    from rankloop.labeling.security import token_hash

    return token_hash(token)


def test_item15_members_of_a_missing_project_are_404(tc, admin):
    for method, url in (("GET", "/api/projects/424242/members"), ("DELETE", "/api/projects/424242/members/1")):
        with pytest.raises(LabelingError) as e:
            admin._call(method, url)
        assert e.value.status == 404
    p = admin.create_project("m", k=2)
    with pytest.raises(LabelingError) as e:  # not a member: nothing to remove
        admin._call("DELETE", f"/api/projects/{p['id']}/members/{admin.me()['id']}")
    assert e.value.status == 404


def test_item15_a_late_submit_is_kept_while_nobody_else_holds_the_task(tc, admin, app):
    """Decision (docs/labeling.md, "Assignment"): a lease that ran out is reclaimed only when someone
    else asks for work; until then the labeler's answer is accepted, since nothing else was given
    that slot. After it is reclaimed the late answer is a 404 (test_api)."""
    p = project_with_tasks(admin, n=1, k=2)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    with app.state.sessionmaker() as db:
        db.execute(update(Slot).where(Slot.id == t["task_id"]).values(lease_expires=datetime(2000, 1, 1, tzinfo=timezone.utc)))
        db.commit()
    assert a.submit(t["task_id"], best_first(t))["duplicate"] is False
    assert len(admin.rankings(p["id"])) == 1


# ------------------------------------------------------------------ 14. error pages


def test_item14_error_pages_keep_the_navigation_and_speak_plainly(tc, admin, app):
    p = project_with_tasks(admin, n=1, k=2)
    admin.create_user("web", "web-password")
    admin.add_member(p["id"], "web")
    with new_client(app) as web:
        page_login(web, *ADMIN)
        r = web.get("/admin/projects/424242")
        assert r.status_code == 404 and "Log out" in r.text and 'href="/admin"' in r.text
        web.cookies.clear()
        page_login(web, "web", "web-password")
        page = web.get("/label", follow_redirects=True)
        task = str(page.url).rsplit("/", 1)[1]
        form = {"order": json.dumps(best_first({"candidates": [{"id": f"proj-0-c{j}"} for j in range(2)]})),
                "csrf_token": csrf_of(page.text)}
        assert web.post(f"/label/{task}", data={**form, "idempotency_key": "first"}, follow_redirects=False).status_code == 303
        r = web.post(f"/label/{task}", data={**form, "idempotency_key": "second"})
        alert = " ".join(re.findall(r'role="alert"[^>]*>(.*?)<', r.text, re.S))
        assert r.status_code == 409 and "already submitted this task" in alert and "idempotency" not in alert


# ------------------------------------------------------------------ the schema change (items 3, 12, 15)


def test_migration_0002_upgrades_a_0001_database_with_data(db_url):
    """A database made by 0001, with a never-expiring token and a ranking, upgrades in place: the
    token gets an expiry, the ranking stays, keys become per project; and it downgrades back."""
    from alembic import command
    from sqlalchemy import inspect, text

    from labhelp import database_at

    cfg, engine = database_at(db_url, "0001")
    now = "2026-01-01 00:00:00"
    with engine.begin() as c:
        c.execute(text("INSERT INTO users (id, username, password_hash, role, active, created_at) "
                       f"VALUES (1, 'ann', 'x', 'labeler', true, '{now}')"))
        c.execute(text(f"INSERT INTO auth_tokens (token_hash, user_id, kind, name, created_at) VALUES ('h', 1, 'api', 'old', '{now}')"))
        for pid in (1, 2):
            c.execute(text(f"INSERT INTO projects (id, name, instructions, k, mode, overlap, gold_rate, lease_seconds, created_at) "
                           f"VALUES ({pid}, 'p{pid}', '', 2, 'ranking', 1, 0, 60, '{now}')"))
            c.execute(text(f"INSERT INTO prompts (id, project_id, external_id, content, meta) VALUES ({pid}, {pid}, 'q', '\"q\"', '{{}}')"))
            c.execute(text(f"INSERT INTO items (id, project_id, prompt_row_id, candidate_ids, is_gold) VALUES ({pid}, {pid}, {pid}, '[]', false)"))
            c.execute(text(f"INSERT INTO slots (id, project_id, item_id, slot_no, labeler_id, status, is_gold) "
                           f"VALUES ({pid}, {pid}, {pid}, 0, 1, 'done', false)"))
        c.execute(text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                       f"idempotency_key, is_gold, created_at) VALUES (1, 1, 1, 1, '[]', false, false, 'k', false, '{now}')"))
    command.upgrade(cfg, "head")
    insert_second = text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                         f"idempotency_key, is_gold, created_at) VALUES (2, 2, 2, 1, '[]', false, false, 'k', false, '{now}')")
    with engine.begin() as c:
        assert c.execute(text("SELECT expires_at FROM auth_tokens WHERE name = 'old'")).scalar_one() is not None
        c.execute(insert_second)  # the same key in the other project
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("rankings")}
    assert ("project_id", "labeler_id", "idempotency_key") in uniques and ("slot_id",) in uniques
    assert ("labeler_id", "idempotency_key") not in uniques
    with engine.begin() as c:
        c.execute(text("DELETE FROM rankings WHERE slot_id = 2"))
    command.downgrade(cfg, "0001")
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("rankings")}
    assert ("labeler_id", "idempotency_key") in uniques and ("slot_id",) in uniques
    with engine.begin() as c:
        assert c.execute(text("SELECT count(*) FROM rankings")).scalar_one() == 1
    command.upgrade(cfg, "head")
    engine.dispose()
