"""The admin pages: every form works with its CSRF token and fails without it."""

import json
import re

from labhelp import ADMIN


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(tc, username, password):
    token = csrf_of(tc.get("/login").text)
    return tc.post("/login", data={"username": username, "password": password, "csrf_token": token}, follow_redirects=False)


def test_admin_pages_create_import_invite_and_watch(tc, sqlite_url):
    r = login(tc, *ADMIN)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    page = tc.get("/admin")
    assert page.status_code == 200 and "New project" in page.text
    csrf = csrf_of(page.text)
    assert tc.post("/admin/projects", data={"name": "web", "k": "2", "overlap": "2"}, follow_redirects=False).status_code == 403
    r = tc.post("/admin/projects", data={"name": "web", "k": "2", "overlap": "2", "gold_rate": "0", "mode": "ranking",
                                         "instructions": "Pick the <b>kinder</b> one", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    url = r.headers["location"]
    rows = [{"prompt_id": f"q{i}", "prompt": f"question {i}", "candidates": [f"yes {i}", f"no {i}"]} for i in range(3)]
    body = "".join(json.dumps(x) + "\n" for x in rows).encode()
    r = tc.post(f"{url}/import", data={"csrf_token": csrf}, files={"candidates": ("c.jsonl", body)})
    assert r.status_code == 200 and "imported 3 new prompts" in r.text
    r = tc.post(f"{url}/import", data={"csrf_token": csrf}, files={"candidates": ("c.jsonl", b"{not json\n")})
    assert "c.jsonl:1: not valid JSON" in r.text
    for name in ("ann", "bob"):
        r = tc.post(f"{url}/invite", data={"username": name, "password": f"{name}-password", "csrf_token": csrf},
                    follow_redirects=False)
        assert r.status_code == 303
    r = tc.post("/admin/users", data={"username": "x", "password": "short", "csrf_token": csrf})
    assert "at least 8" in r.text
    page = tc.get(url)
    assert "Pick the &lt;b&gt;kinder&lt;/b&gt; one" in page.text and "ann, bob" in page.text
    tc.post("/logout", data={"csrf_token": csrf})
    tc.cookies.clear()
    for name in ("ann", "bob"):  # both rank everything the same way
        login(tc, name, f"{name}-password")
        while True:
            page = tc.get("/label", follow_redirects=True)
            if "Nothing left" in page.text:
                break
            ids = re.findall(r'<li class="card" data-id="([^"]+)"', page.text)
            task = str(page.url).rsplit("/", 1)[1]
            key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text).group(1)
            r = tc.post(f"/label/{task}", data={"order": json.dumps([[i] for i in sorted(ids)]), "idempotency_key": key,
                                                "csrf_token": csrf_of(page.text)}, follow_redirects=False)
            assert r.status_code == 303
        tc.cookies.clear()
    login(tc, *ADMIN)
    page = tc.get(url)
    assert re.search(r"<td>1\.000</td>\s*<td>1\.000</td>", page.text)  # pairwise agreement and alpha
    assert "6 / 6" in page.text  # slots done
    export = tc.get(url.replace("/admin/projects", "/api/projects") + "/export?format=trl")
    assert export.status_code == 200 and len(export.text.splitlines()) == 6


def test_bad_ranking_form_is_shown_again_with_the_reason(tc, admin):
    from labhelp import make_records

    p = admin.create_project("f", k=3)
    admin.import_candidates(p["id"], *make_records(1, 3))
    admin.create_user("ann", "ann-password")
    admin.add_member(p["id"], "ann")
    login(tc, "ann", "ann-password")
    page = tc.get("/label", follow_redirects=True)
    task = str(page.url).rsplit("/", 1)[1]
    r = tc.post(f"/label/{task}", data={"order": json.dumps([["p0-c0"]]), "idempotency_key": "k", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 422 and "missing: [&#39;p0-c1&#39;, &#39;p0-c2&#39;]" in r.text
