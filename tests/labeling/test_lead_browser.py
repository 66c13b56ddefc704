"""A lead's pages in a real browser (Playwright driving Debian's chromium; never downloads one):
an invite link used and refused, live settings and invite links from the project page, the
reviewer's queue and side-by-side item with an adjudicated ranking, the dashboard with its charts
and un-pausing. Screenshots kept in test-artifacts/."""

from __future__ import annotations

import json

import pytest

from labhelp import ADMIN, ARTIFACTS, live_app
from rankloop.labeling.client import LabelingClient
from rankloop.records import Candidate, Prompt

pytestmark = pytest.mark.browser

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'




@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_app(tmp_path_factory.mktemp("lead-browser")) as app:
        yield app


def new_project(admin, name, n=3, k=3, overlap=2, gold=None, evil=False):
    p = admin.create_project(name, k=k, overlap=overlap, instructions="Rank by helpfulness.")
    prompts = [Prompt(id=f"{name}-{i}", text=f"Prompt {i} " + (EVIL if evil else "")) for i in range(n)]
    cands = [Candidate(id=f"{name}-{i}-{j}", prompt_id=f"{name}-{i}", text=f"answer {j} " + (EVIL if evil and j == 0 else ""))
             for i in range(n) for j in range(k)]
    admin.import_candidates(p["id"], prompts, cands, gold=gold)
    return p


def log_in(browser, base, user, password):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return ctx, page


def test_invite_link_in_the_browser(browser, server):
    base, admin = server
    ARTIFACTS.mkdir(exist_ok=True)
    p = new_project(admin, "inv", n=2, overlap=1)
    inv = admin.create_invite(p["id"], days=3)
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.goto(base + inv["path"])
    assert "Join inv" in page.locator("h1").inner_text()
    page.screenshot(path=str(ARTIFACTS / "labeling-invite.png"), full_page=True)
    page.fill("input[name=username]", "invitee")
    page.fill("input[name=password]", "invitee-password")
    page.fill("input[name=password2]", "invitee-passwordX")
    page.click("button[type=submit]")
    assert "differ" in page.locator(".error").inner_text()  # the form comes back with a clear message
    page.fill("input[name=password]", "invitee-password")
    page.fill("input[name=password2]", "invitee-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/label/*")  # logged in, a member, labeling
    assert page.locator(".who").inner_text() == "invitee"
    other = browser.new_context().new_page()  # someone else with the same link: refused, plainly
    other.goto(base + inv["path"])
    assert "already used" in other.locator("#invite-unusable").inner_text()
    assert other.locator("input[name=password]").count() == 0
    other.context.close()
    ctx.close()


def test_project_page_live_settings_and_invite_link(browser, server):
    base, admin = server
    p = new_project(admin, "live", n=3, overlap=1)
    ctx, page = log_in(browser, base, *ADMIN)
    page.goto(f"{base}/admin/projects/{p['id']}")
    page.fill("#settings input[name=overlap]", "3")
    page.fill("#settings input[name=qualify_items]", "0")
    page.fill("#settings input[name=review_below]", "0.5")
    page.fill("#settings textarea[name=instructions]", "New guidance " + EVIL)
    page.click("#settings button[type=submit]")
    page.wait_for_url(f"{base}/admin/projects/{p['id']}?notice=settings-saved")
    assert "Settings saved" in page.locator(".notice").inner_text()
    got = next(x for x in admin.projects() if x["id"] == p["id"])
    assert got["overlap"] == 3 and got["review_below"] == 0.5 and got["instructions"] == "New guidance " + EVIL
    assert admin.progress(p["id"])["slots"] == 9  # the new slots exist
    page.fill("#settings input[name=overlap]", "0")
    page.locator("#settings input[name=overlap]").evaluate("e => e.removeAttribute('min')")  # past the browser's own check
    page.click("#settings button[type=submit]")
    assert "overlap" in page.locator(".error").inner_text()  # a bad value: said, nothing changed
    assert next(x for x in admin.projects() if x["id"] == p["id"])["overlap"] == 3

    page.goto(f"{base}/admin/projects/{p['id']}")
    page.select_option("#invite-links select[name=role]", "reviewer")
    page.fill("#invite-links input[name=days]", "2")
    page.click("#invite-links button[type=submit]")
    link = page.locator("#new-invite code").inner_text()
    assert link.startswith(f"{base}/invite/")
    assert page.locator("#invites td", has_text="reviewer").count() == 1
    page.screenshot(path=str(ARTIFACTS / "labeling-project-settings.png"), full_page=True)
    page.goto(f"{base}/admin/projects/{p['id']}")  # shown once: not on the page again
    assert page.locator("#new-invite").count() == 0 and link.rsplit("/", 1)[1] not in page.content()
    assert page.evaluate("window.__pwned") is None
    ctx.close()


def test_reviewer_adjudicates_side_by_side(browser, server):
    base, admin = server
    p = new_project(admin, "rev", n=2, overlap=2, evil=True)
    for name, reverse in (("ra", False), ("rb", True)):
        admin.create_user(name, "labeler-password")
        admin.add_member(p["id"], name)
        c = LabelingClient(base)
        c.login(name, "labeler-password")
        while (t := c.next_task(p["id"])) is not None:
            order = sorted(x["id"] for x in t["candidates"])
            c.submit(t["task_id"], list(reversed(order)) if reverse else order, rationale=f"{name} says " + EVIL)
    admin.create_user("rita", "reviewer-password", role="reviewer")
    admin.add_member(p["id"], "rita")
    dialogs = []
    ctx, page = log_in(browser, base, "rita", "reviewer-password")
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    assert page.url == f"{base}/review"  # a reviewer lands on the review page
    assert page.locator("#review-projects td", has_text="rev").count() == 1
    page.click("#review-projects a")
    rows = page.locator("#review-queue tr[data-item]")
    assert rows.count() == 2
    rows.first.locator("a").click()
    table = page.locator("#side-by-side")
    heads = table.locator("tr").first.locator("th").all_inner_texts()
    assert heads == ["Candidate", "ra", "rb", "Consensus"]  # one column per labeler
    first = page.locator("#side-by-side tr[data-candidate]").first
    cid = first.get_attribute("data-candidate")
    places = first.locator("td").all_inner_texts()[:2]
    assert sorted(places) in (["1", "3"], ["2", "2"], ["3", "1"])  # opposite rankings side by side
    assert EVIL in page.locator("#side-by-side").inner_text()  # rationale text shown as text
    assert page.locator("main img, main script").count() == 0 and page.evaluate("window.__pwned") is None
    page.screenshot(path=str(ARTIFACTS / "labeling-review-item.png"), full_page=True)
    ids = [r.get_attribute("data-candidate") for r in page.locator("#side-by-side tr[data-candidate]").all()]
    page.fill(f"input[name=place_{ids[0]}]", "2")
    page.fill(f"input[name=place_{ids[1]}]", "1")
    page.fill(f"input[name=place_{ids[2]}]", "2")
    page.fill("textarea[name=note]", "Tie for second " + EVIL)
    page.click("#adjudicate button[type=submit]")
    assert "saved" in page.locator(".notice").inner_text()
    assert "by rita" in page.locator("#adjudication").inner_text()
    assert EVIL in page.locator("#adjudication").inner_text()
    item_rows = [json.loads(x) for x in admin.export(p["id"]).splitlines()]
    settled = [r for r in item_rows if r.get("provenance") == "adjudicated"]
    assert len(settled) == 1 and settled[0]["ranking"] == [[ids[1]], sorted([ids[0], ids[2]])] and settled[0]["labeler"] == "rita"
    assert settled[0]["rationale"] == "Tie for second " + EVIL and cid in ids
    page.goto(f"{base}/review/{p['id']}")
    assert page.locator("#review-queue td", has_text="adjudicated").count() == 1
    page.goto(f"{base}/admin")  # a reviewer is not an admin
    assert page.locator("h1").inner_text() == "403"
    assert page.evaluate("window.__pwned") is None and not dialogs
    ctx.close()


def test_dashboard_charts_and_unpause(browser, server):
    base, admin = server
    gold = {f"dash-{i}": [[f"dash-{i}-0"], [f"dash-{i}-1"], [f"dash-{i}-2"]] for i in range(2)}
    p = new_project(admin, "dash", n=6, overlap=2, gold=gold)
    admin.update_project(p["id"], qualify_items=2, qualify_accuracy=0.9)
    for name, good in (("good", True), ("sloppy", False)):
        admin.create_user(name, "labeler-password")
        admin.add_member(p["id"], name)
        c = LabelingClient(base)
        c.login(name, "labeler-password")
        while (t := c.next_task(p["id"])) is not None:
            order = gold.get(t["prompt_id"]) or [[x] for x in sorted(x["id"] for x in t["candidates"])]
            c.submit(t["task_id"], order if good else list(reversed(order)))
    ctx, page = log_in(browser, base, *ADMIN)
    page.goto(f"{base}/admin/projects/{p['id']}/dashboard")
    good_row, bad_row = page.locator("tr[data-labeler=good]"), page.locator("tr[data-labeler=sloppy]")
    assert good_row.locator(".state").inner_text().startswith("qualified")
    assert bad_row.locator(".state").inner_text().startswith("failed")
    assert good_row.locator("svg").count() == 3  # agreement, gold, per-day charts
    days = good_row.locator("svg[aria-label^='rankings per day']")
    assert days.count() == 1 and days.get_attribute("aria-label").endswith(": 6")  # 2 gold + 4 real items today
    assert bad_row.locator("svg rect[fill='#c0392b']").count() == 1  # gold accuracy 0, under the threshold: red
    page.screenshot(path=str(ARTIFACTS / "labeling-dashboard.png"), full_page=True)
    bad_row.locator("button", has_text="Pass anyway").click()
    page.wait_for_url(f"{base}/admin/projects/{p['id']}/dashboard")
    assert page.locator("tr[data-labeler=sloppy] .state").inner_text().startswith("qualified")
    assert {s["username"]: s["state"] for s in admin.labeler_states(p["id"])}["sloppy"] == "qualified"
    ctx.close()
    # a labeler may not see it
    ctx, page = log_in(browser, base, "good", "labeler-password")
    page.goto(f"{base}/admin/projects/{p['id']}/dashboard")
    assert page.locator("h1").inner_text() == "403"
    ctx.close()
