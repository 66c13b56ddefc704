"""The demonstration page and the review page in a real browser (Playwright driving Debian's
chromium; never downloads one): write, autosave (a reload and a closed tab lose nothing),
Ctrl+Enter, start from a draft (its origin kept), empty refused, markup shown as text, review
accept / edit / reject and the export, CSRF on the review form. Screenshots in test-artifacts/."""

from __future__ import annotations

import json

import pytest

from labhelp import ADMIN, ARTIFACTS, live_app
from rankloop.records import Candidate, Prompt
from test_browser import EVIL

pytestmark = pytest.mark.browser

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit " + EVIL},
        {"role": "assistant", "content": "Apple <b>not bold</b>."}, {"role": "user", "content": "And a vegetable?"}]
GUIDE = "Write the answer you would want.\nBe kind; no <em>markup</em> needed."




@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_app(tmp_path_factory.mktemp("demo-browser")) as app:
        yield app


_names = iter(range(1, 1000))


def demo_page(browser, server, width: int = 1200):
    """A new demonstration project (an XSS prompt with an XSS draft, a conversation with a draft, a
    plain prompt without one) and its own logged-in labeler, in a new browser context."""
    base, admin = server
    n = next(_names)
    p = admin.create_project(f"demo-{n}", mode="demonstration", overlap=1, instructions=GUIDE)
    prompts = [Prompt(id=f"x{n}", text="Prompt with markup: " + EVIL), Prompt(id=f"c{n}", messages=CHAT),
               Prompt(id=f"p{n}", text="Say something nice.")]
    drafts = [Candidate(id=f"x{n}-d", prompt_id=f"x{n}", text="Draft " + EVIL, policy="sft"),
              Candidate(id=f"c{n}-d", prompt_id=f"c{n}", text="Carrot.", policy="sft")]
    admin.import_prompts(p["id"], prompts, drafts)
    user = f"writer{n}"
    admin.create_user(user, "labeler-password")
    admin.add_member(p["id"], user)
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    page = ctx.new_page()
    login(page, base, user, "labeler-password")
    page.wait_for_url(f"{base}/label/*")
    return ctx, page, p["id"], n


def login(page, base, user, password):
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def navigating(page, action) -> None:
    """Do ``action`` and wait for the page it leads to (the next task, or the page after a form)."""
    with page.expect_navigation():
        action()


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_markup_is_text_drafts_start_and_keep_their_origin(browser, server):
    base, admin = server
    ARTIFACTS.mkdir(exist_ok=True)
    ctx, page, pid, n = demo_page(browser, server)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    # task 1: markup in the prompt and the draft is text; the guidelines are beside the task
    assert page.locator("#conversation .text").inner_text() == "Prompt with markup: " + EVIL
    assert page.locator(".draft-text").inner_text() == "Draft " + EVIL
    assert page.locator("#guidelines").inner_text() == GUIDE
    assert page.locator("#conversation img, .drafts img, #conversation script").count() == 0
    page.click("button.start-from")
    expect(page.locator("#response")).to_have_value("Draft " + EVIL)
    expect(page.locator("#origin")).to_have_text("Edited from the model draft.")
    page.locator("#response").press("End")
    page.keyboard.type(" (fixed)")
    words = len(("Draft " + EVIL + " (fixed)").split())
    expect(page.locator("#counter")).to_have_text(f"{len('Draft ' + EVIL + ' (fixed)')} characters · {words} words")
    assert page.evaluate("window.__pwned") is None and not dialogs
    page.screenshot(path=str(ARTIFACTS / "labeling-demo-draft.png"), full_page=True)
    navigating(page, lambda: page.click("#submit-btn"))
    # task 2: the conversation, turn by turn, roles shown; markup in a turn is text
    turns = page.locator("#conversation .msg")
    assert turns.count() == 4
    assert page.locator("#conversation .role").all_text_contents() == ["system", "user", "assistant", "user"]
    assert turns.nth(1).locator(".text").inner_text() == "Name a fruit " + EVIL
    assert turns.nth(2).locator(".text").inner_text() == "Apple <b>not bold</b>."
    page.fill("#response", "Broccoli.")
    navigating(page, lambda: page.locator("#response").press("Control+Enter"))
    assert page.evaluate("window.__pwned") is None and not dialogs
    by = {d["prompt_id"]: d for d in admin.demonstrations(pid)}
    assert by[f"x{n}"]["response"] == "Draft " + EVIL + " (fixed)" and by[f"x{n}"]["edited_from"] == f"x{n}-d"
    assert by[f"c{n}"]["response"] == "Broccoli." and by[f"c{n}"]["edited_from"] is None  # written from scratch
    ctx.close()


def test_empty_is_refused_and_autosave_survives_reload_and_a_closed_tab(browser, server):
    base, admin = server
    ctx, page, pid, n = demo_page(browser, server)
    url = page.url
    # empty and whitespace-only: refused with a message, nothing sent, the page stays
    page.click("#submit-btn")
    expect(page.locator("#submit-error")).to_have_text("The response is empty: write the answer you want the model to give.")
    page.fill("#response", "   \n  ")
    page.locator("#response").press("Control+Enter")
    expect(page.locator("#submit-error")).to_have_text(
        "The response is only whitespace: write the answer you want the model to give.")
    assert page.url == url and admin.demonstrations(pid) == []
    # write; the autosave reaches the server; a reload brings the text back
    page.fill("#response", "")
    page.locator("#response").type("My first thoughts,\nline two")
    expect(page.locator("#autosave-status")).to_contain_text("Saved")
    page.reload()
    expect(page.locator("#response")).to_have_value("My first thoughts,\nline two")
    expect(page.locator("#autosave-status")).to_have_text("Restored your autosaved text.")
    # type more and close the tab at once (before the debounce fires): nothing is lost
    page.locator("#response").press("Control+End")
    page.keyboard.type(" and three")
    page.close(run_before_unload=True)
    page = ctx.new_page()
    page.goto(f"{base}/label")
    page.wait_for_url(f"{base}/label/*")
    expect(page.locator("#response")).to_have_value("My first thoughts,\nline two and three")
    # another labeler's session never shows it
    admin.create_user(f"other{n}", "labeler-password")
    admin.add_member(pid, f"other{n}")
    ctx2 = browser.new_context()
    p2 = ctx2.new_page()
    login(p2, base, f"other{n}", "labeler-password")
    p2.wait_for_url(f"{base}/label/*")
    assert p2.url != page.url and p2.locator("#response").input_value() == ""
    p2.goto(page.url)  # the first labeler's task: not theirs
    assert "not found among your tasks" in p2.content() and "My first thoughts" not in p2.content()
    ctx2.close()
    navigating(page, lambda: page.locator("#response").press("Control+Enter"))
    [d] = admin.demonstrations(pid)
    assert d["response"] == "My first thoughts,\nline two and three"
    ctx.close()


def test_phone_width_stacks_the_guidelines_under_the_task(browser, server):
    ctx, page, _pid, _n = demo_page(browser, server, width=390)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    box_top = page.locator("#response").bounding_box()["y"]
    assert page.locator("#guidelines").bounding_box()["y"] > box_top
    page.screenshot(path=str(ARTIFACTS / "labeling-demo-phone.png"))
    ctx.close()


def test_review_accept_edit_reject_export_and_csrf(browser, server):
    base, admin = server
    ctx, page, pid, n = demo_page(browser, server)
    for text in ("first answer", "second answer", "third answer"):
        page.fill("#response", text)
        navigating(page, lambda: page.locator("#response").press("Control+Enter"))
    ctx.close()
    ids = {d["response"]: d["id"] for d in admin.demonstrations(pid)}
    assert sorted(ids) == ["first answer", "second answer", "third answer"]

    actx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = actx.new_page()
    login(page, base, *ADMIN)
    page.wait_for_url(f"{base}/admin")
    page.goto(f"{base}/admin/projects/{pid}")
    expect(page.locator("#demo-counts")).to_have_text("3 pending · 0 accepted · 0 rejected")
    page.click("#review-link")
    page.wait_for_url(f"{base}/admin/projects/{pid}/demonstrations*")
    cards = page.locator(".review-card")
    assert cards.count() == 3
    assert cards.nth(0).locator(".prompt .text").inner_text() == "Prompt with markup: " + EVIL
    # accept as written
    navigating(page, lambda: page.locator(f"#d{ids['first answer']} button[value=accepted]").click())
    expect(page.locator(".notice")).to_have_text("Review saved.")
    # accept with an edit
    page.locator(f"#d{ids['second answer']} textarea").fill("second answer, improved\nby the reviewer")
    navigating(page, lambda: page.locator(f"#d{ids['second answer']} button[value=accepted]").click())
    # reject (the text box is ignored)
    navigating(page, lambda: page.locator(f"#d{ids['third answer']} button[value=rejected]").click())
    assert "review=pending" in page.url
    assert page.locator(".review-card").count() == 0
    page.goto(f"{base}/admin/projects/{pid}/demonstrations")
    page.screenshot(path=str(ARTIFACTS / "labeling-demo-review.png"), full_page=True)
    by = {d["id"]: d for d in admin.demonstrations(pid)}
    assert by[ids["first answer"]]["review"] == "accepted" and by[ids["first answer"]]["accepted_text"] is None
    assert by[ids["second answer"]]["accepted_text"] == "second answer, improved\nby the reviewer"
    assert by[ids["second answer"]]["response"] == "second answer"
    assert by[ids["third answer"]]["review"] == "rejected"
    # the export link: accepted only, the edit in place of the original
    got = page.request.get(f"{base}/api/projects/{pid}/export?format=demonstrations")
    rows = [json.loads(x) for x in got.text().splitlines()]
    assert [r["response"] for r in rows] == ["first answer", "second answer, improved\nby the reviewer"]
    # the review form without the session's CSRF secret is refused, and changes nothing
    r = page.request.post(f"{base}/admin/demonstrations/{ids['third answer']}/review",
                          form={"verdict": "accepted", "text": "sneaky", "project_id": str(pid)})
    assert r.status == 403 and "CSRF" in r.text()
    assert admin.demonstrations(pid, review="rejected")[0]["id"] == ids["third answer"]
    actx.close()


def test_a_labeler_cannot_open_the_review_page(browser, server):
    base, _admin = server
    ctx, page, pid, _n = demo_page(browser, server)
    r = page.goto(f"{base}/admin/projects/{pid}/demonstrations")
    assert r.status == 403
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")  # the navigation bar's logout form
    r = page.request.post(f"{base}/admin/demonstrations/1/review", form={"verdict": "accepted", "csrf_token": token})
    assert r.status == 403
    ctx.close()


def test_skip_gives_the_task_back(browser, server):
    """The page's Skip (day's skip route): the next task comes, the skipped prompt goes to another
    labeler and never back to this one; the text written before skipping is not submitted."""
    base, admin = server
    ctx, page, pid, n = demo_page(browser, server)
    first = page.url
    page.fill("#response", "not what I want to send")
    page.click("#skip-box summary")
    page.select_option("#skip-reason", "expertise")
    page.fill("#skip-note", "needs a botanist")
    navigating(page, lambda: page.click("#skip-btn"))
    expect(page.locator(".notice")).to_contain_text("Task skipped")
    assert page.url != first and page.locator("#demo-task").count() == 1
    assert admin.demonstrations(pid) == []
    admin.create_user(f"next{n}", "labeler-password")
    admin.add_member(pid, f"next{n}")
    ctx2 = browser.new_context()
    p2 = ctx2.new_page()
    login(p2, base, f"next{n}", "labeler-password")
    p2.wait_for_url(f"{base}/label/*")
    assert p2.url.split("?")[0] == first.split("?")[0]  # the skipped slot went back to the pool, first in line
    assert p2.locator("#response").input_value() == ""  # and nobody else's text comes with it
    ctx2.close()
    ctx.close()


def test_csrf_guards_autosave_and_submit_and_the_form_works_without_script(browser, server):
    """The session cookie alone changes nothing (the page's header or form field must carry the
    session's CSRF secret); with it, the no-JavaScript form stores the demonstration."""
    base, admin = server
    ctx, page, pid, n = demo_page(browser, server)
    task_id = page.locator("#demo-task").get_attribute("data-task")
    r = page.request.put(f"{base}/api/tasks/{task_id}/draft", data={"text": "forged"})
    assert r.status == 403 and "CSRF" in r.text()
    r = page.request.post(f"{base}/api/tasks/{task_id}/demonstration", data={"response": "forged", "idempotency_key": "f"})
    assert r.status == 403
    r = page.request.post(f"{base}/label/{task_id}/demonstration", form={"response": "forged", "idempotency_key": "f"})
    assert r.status == 403
    assert admin.demonstrations(pid) == []
    page.reload()
    assert page.locator("#response").input_value() == ""  # the forged autosave was not stored
    csrf = page.locator("#demo-form input[name=csrf_token]").get_attribute("value")
    key = page.locator("#demo-form input[name=idempotency_key]").get_attribute("value")
    r = page.request.post(f"{base}/label/{task_id}/demonstration",
                          form={"csrf_token": csrf, "response": "line one\r\nline two", "idempotency_key": key,
                                "edited_from": f"x{n}-d"})
    assert r.ok and "/label/" in r.url
    [d] = admin.demonstrations(pid)
    assert d["response"] == "line one\nline two" and d["edited_from"] == f"x{n}-d"  # a form's CRLF stored as LF
    ctx.close()
