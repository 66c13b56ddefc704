"""The ranking page in a real browser (Playwright driving Debian's chromium; never downloads one):
log in, rank by keyboard and by dragging, submit, get the next task, XSS stays text, phone width,
screenshots kept in test-artifacts/."""

from __future__ import annotations


import pytest

from labhelp import ARTIFACTS, live_app
from rankloop.records import Candidate, Prompt

pytestmark = pytest.mark.browser

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
LONG = "A long answer that must stay readable. " * 120




@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_app(tmp_path_factory.mktemp("browser")) as (base, admin):
        p = admin.create_project("web", k=3, overlap=1, instructions="Rank the answers by helpfulness.\nTies are fine.")
        prompts = [Prompt(id="evil", text="Prompt with markup: " + EVIL), Prompt(id="drag", text="Second prompt"),
                   Prompt(id="long", text="Third prompt")]
        cands = [Candidate(id="e1", prompt_id="evil", text=EVIL), Candidate(id="e2", prompt_id="evil", text="plain two"),
                 Candidate(id="e3", prompt_id="evil", text="plain three <b>not bold</b>"),
                 Candidate(id="d1", prompt_id="drag", text="drag one"), Candidate(id="d2", prompt_id="drag", text="drag two"),
                 Candidate(id="d3", prompt_id="drag", text="drag three"),
                 Candidate(id="l1", prompt_id="long", text=LONG), Candidate(id="l2", prompt_id="long", text="short"),
                 Candidate(id="l3", prompt_id="long", text="x" * 3000)]
        admin.import_candidates(p["id"], prompts, cands)
        admin.create_user("ann", "ann-password")
        admin.add_member(p["id"], "ann")
        pp = admin.create_project("pairs", mode="pairwise", overlap=1)
        admin.import_candidates(pp["id"], [Prompt(id="q", text="Which is better?")],
                                [Candidate(id="qa", prompt_id="q", text="left " + EVIL), Candidate(id="qb", prompt_id="q", text="right")])
        admin.add_member(pp["id"], "ann")
        yield base, admin, p["id"], pp["id"]


def ids_by_number(page) -> dict[int, str]:
    return {int(li.get_attribute("data-n")): li.get_attribute("data-id") for li in page.locator("#ranking > li").all()}


def shown_order(page) -> list[str]:
    return [li.get_attribute("data-id") for li in page.locator("#ranking > li").all()]


def test_rank_by_keyboard_and_drag_xss_and_phone(browser, server):
    base, admin, pid, ppid = server
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", "ann-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/label/*")

    # --- task 1: the XSS prompt, ranked by keyboard alone
    assert page.locator(".prompt .text").inner_text() == "Prompt with markup: " + EVIL
    texts = page.locator("#ranking .text").all_inner_texts()
    assert EVIL in texts and "plain three <b>not bold</b>" in texts
    assert page.locator("#ranking img, .prompt img, #ranking b").count() == 0
    assert page.evaluate("window.__pwned") is None and not dialogs
    by_n = ids_by_number(page)
    page.screenshot(path=str(ARTIFACTS / "labeling-rank-xss.png"), full_page=True)
    page.keyboard.press("3")
    page.keyboard.press("=")
    page.keyboard.press("1")
    page.keyboard.press("2")
    assert shown_order(page) == [by_n[3], by_n[1], by_n[2]]
    assert page.locator("#ranking > li").nth(1).locator(".tie-box").is_checked()
    page.screenshot(path=str(ARTIFACTS / "labeling-rank-keyboard.png"), full_page=True)
    first_url = page.url
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: u != first_url and "/label/" in u)
    rows = admin.rankings(pid)
    assert rows[-1]["order"] == [[by_n[3], by_n[1]], [by_n[2]]] and rows[-1]["labeler"] == "ann"

    # --- task 2: ranked by dragging (pointer events), then the submit button
    assert page.locator(".prompt .text").inner_text() == "Second prompt"
    before = shown_order(page)
    last = page.locator("#ranking > li").nth(2)
    top = page.locator("#ranking > li").nth(0)
    last.locator(".handle").drag_to(top, target_position={"x": 40, "y": 3})
    after = shown_order(page)
    assert after == [before[2], before[0], before[1]]
    page.locator("#ranking > li").nth(2).locator(".handle").drag_to(page.locator("#ranking > li").nth(1), target_position={"x": 40, "y": 2})
    after = shown_order(page)
    assert after == [before[2], before[1], before[0]]
    page.check("#unsafe")
    page.fill("textarea[name=rationale]", "dragged <em>it</em>")
    second_url = page.url
    page.click("#submit-btn")
    page.wait_for_url(lambda u: u != second_url and "/label/" in u)
    rows = admin.rankings(pid)
    assert rows[-1]["order"] == [[x] for x in after] and rows[-1]["unsafe"] and rows[-1]["rationale"] == "dragged <em>it</em>"

    # --- task 3: long texts on a phone-sized screen
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.locator(".prompt .text").inner_text() == "Third prompt"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    box = page.locator("#ranking > li").first.bounding_box()
    assert box["width"] <= 390
    page.screenshot(path=str(ARTIFACTS / "labeling-rank-phone.png"), full_page=False)
    page.locator("#ranking > li").nth(0).locator(".down").click()  # the touch-friendly buttons
    order = shown_order(page)
    page.check("#all-bad")
    page.keyboard.press("Enter")
    page.wait_for_load_state()

    # --- the pairwise project comes next: press 2 (B better) and Enter
    page.wait_for_selector("#choices")
    assert page.locator("#ranking .text").first.inner_text().startswith("left") or page.locator("#ranking .text").nth(1).inner_text().startswith("left")
    b_id = ids_by_number(page)[2]
    a_id = ids_by_number(page)[1]
    page.screenshot(path=str(ARTIFACTS / "labeling-pairwise-phone.png"))
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done")  # nothing left
    assert "Nothing left to label" in page.content()
    rows = admin.rankings(pid)
    assert rows[-1]["order"] == [[x] for x in order] and rows[-1]["all_bad"]
    assert admin.rankings(ppid)[-1]["order"] == [[b_id], [a_id]]
    assert page.evaluate("window.__pwned") is None and not dialogs
    ctx.close()


# ---------------------------------------------------------------- labels lost or corrupted (issue 11)

_names = iter(range(1, 1000))


def labeler_page(browser, server, mode: str = "ranking", n_prompts: int = 2, k: int = 3):
    """A new project with its own logged-in labeler, in a new browser context."""
    base, admin, _, _ = server
    n = next(_names)
    p = admin.create_project(f"{mode}-{n}", k=k, mode=mode, overlap=1)
    prompts = [Prompt(id=f"q{n}-{i}", text=f"Prompt {i} of project {n}") for i in range(n_prompts)]
    cands = [Candidate(id=f"q{n}-{i}-{j}", prompt_id=f"q{n}-{i}", text=f"answer {j} to prompt {i}")
             for i in range(n_prompts) for j in range(k)]
    admin.import_candidates(p["id"], prompts, cands)
    user = f"lab{n}"
    admin.create_user(user, "labeler-password")
    admin.add_member(p["id"], user)
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "labeler-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/label/*")
    return ctx, page, p["id"]


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def settled(page) -> None:
    """Let any submission the last action started reach the server (the page sends it with fetch)."""
    page.wait_for_load_state()
    page.wait_for_timeout(300)


def test_enter_submits_only_what_the_labeler_ranked(browser, server):
    """#9: Enter on a fresh task saved the shuffled display order; Enter on a focused ↑/↓ submitted."""
    _, admin, _, _ = server
    ctx, page, pid = labeler_page(browser, server, n_prompts=2)
    url = page.url
    shown = shown_order(page)
    page.keyboard.press("Enter")  # nothing ranked yet
    settled(page)
    assert page.url == url and admin.rankings(pid) == []
    assert "not ranked" in page.locator("#status").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "labeling-rank-not-ranked.png"), full_page=True)
    page.keyboard.press("2")  # one of three picked: still not a ranking
    page.keyboard.press("Enter")
    settled(page)
    assert page.url == url and admin.rankings(pid) == []
    assert "1 of 3" in page.locator("#status").inner_text()
    page.keyboard.press("Escape")

    # Enter on a focused ↓ moves the card (again and again), and submits nothing.
    first = shown_order(page)[0]
    page.locator("#ranking > li").nth(0).locator(".down").focus()
    page.keyboard.press("Enter")
    assert shown_order(page)[1] == first
    page.keyboard.press("Enter")  # focus stayed on the moved card's button
    assert shown_order(page)[2] == first
    settled(page)
    assert page.url == url and admin.rankings(pid) == []
    ranked = shown_order(page)
    page.click("#submit-btn")
    page.wait_for_url(lambda u: u != url and "/label/" in u)
    rows = admin.rankings(pid)
    assert len(rows) == 1 and rows[0]["order"] == [[x] for x in ranked]

    # The shown order, explicitly accepted: Enter, read the warning, Enter again.
    url = page.url
    shown = shown_order(page)
    page.keyboard.press("Enter")
    settled(page)
    assert page.url == url and len(admin.rankings(pid)) == 1
    assert "again" in page.locator("#status").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_selector("#done")
    assert admin.rankings(pid)[-1]["order"] == [[x] for x in shown]
    ctx.close()


def test_form_error_keeps_the_ranking_and_rationale(browser, server):
    """#10: a too-long rationale gave a raw pydantic error and a fresh page: ordering and rationale gone."""
    from rankloop.labeling.schemas import SubmitIn

    _, admin, _, _ = server
    ctx, page, pid = labeler_page(browser, server, n_prompts=1)
    limit = next(m.max_length for m in SubmitIn.model_fields["rationale"].metadata if hasattr(m, "max_length"))
    box = page.locator("textarea[name=rationale]")
    assert box.get_attribute("maxlength") == str(limit)  # the server's limit, on the page

    by_n = ids_by_number(page)
    for key in "321":
        page.keyboard.press(key)
    mine = [by_n[3], by_n[2], by_n[1]]
    assert shown_order(page) == mine

    # Typing past the limit stops at it, and the page says so.
    box.focus()
    page.keyboard.insert_text("y" * (limit + 120))
    assert len(box.input_value()) == limit
    assert "limit" in page.locator("#rationale-count").inner_text()
    # A paste past the limit is kept whole, and the page says by how much to shorten it.
    page.evaluate("""([n]) => {
        const box = document.querySelector('textarea[name=rationale]');
        box.value = ''; box.focus();
        const dt = new DataTransfer(); dt.setData('text/plain', 'p'.repeat(n));
        box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
    }""", [limit + 120])
    assert len(box.input_value()) == limit + 120
    assert "120" in page.locator("#rationale-count").inner_text()
    url = page.url
    page.click("#submit-btn")
    settled(page)
    assert page.url == url and admin.rankings(pid) == []
    err = page.locator("#submit-error")
    assert err.is_visible() and "120" in err.inner_text() and "Rationale" in err.inner_text()

    # The server's own check (a page without the maxlength): its 422 in the labeler's words, work kept.
    page.evaluate("document.querySelector('textarea[name=rationale]').removeAttribute('maxlength')")
    long = "why " * 2529 + "why?"  # 10,120 characters
    box.fill(long)
    page.click("#submit-btn")
    expect(err).to_contain_text("10,000")  # (not wait_for_function: its polling is eval, which the page's CSP forbids)
    text = err.inner_text()
    assert "Rationale" in text and "120" in text and "validation error" not in text and "type=" not in text
    assert long[:50] not in text  # the input is not echoed back
    assert page.url == url and admin.rankings(pid) == []
    assert shown_order(page) == mine and box.input_value() == long
    assert not page.locator("#submit-btn").is_disabled()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "labeling-rank-error-kept.png"), full_page=True)

    box.fill("three is clearly best")
    page.click("#submit-btn")
    page.wait_for_selector("#done")
    (row,) = admin.rankings(pid)
    assert row["order"] == [[x] for x in mine] and row["rationale"] == "three is clearly best"
    ctx.close()


def test_pairwise_both_bad_keeps_the_preference(browser, server):
    """#11: "Both bad" stored a tie; ticking "Both are bad" then clicking A/B unticked it and submitted."""
    _, admin, _, _ = server
    ctx, page, pid = labeler_page(browser, server, mode="pairwise", n_prompts=3, k=2)

    # Tick "Both are bad", then click "B is better": nothing is unticked or sent until Submit.
    url = page.url
    a, b = ids_by_number(page)[1], ids_by_number(page)[2]
    page.check("#all-bad")
    page.click("#choices button[data-choice='2']")
    settled(page)
    assert page.url == url and admin.rankings(pid) == []
    assert page.is_checked("#all-bad") and "B is better" in page.locator("#status").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "labeling-pairwise-both-bad.png"), full_page=True)
    page.fill("textarea[name=rationale]", "B is less bad")
    page.click("#submit-btn")
    page.wait_for_url(lambda u: u != url and "/label/" in u)
    (row,) = admin.rankings(pid)
    assert row["order"] == [[b], [a]] and row["all_bad"] and row["rationale"] == "B is less bad"

    # By keyboard: 0 says both are bad but is no preference (no tie is stored); then 1, Enter.
    url = page.url
    a, b = ids_by_number(page)[1], ids_by_number(page)[2]
    page.keyboard.press("0")
    assert page.is_checked("#all-bad")
    page.keyboard.press("Enter")
    settled(page)
    assert page.url == url and len(admin.rankings(pid)) == 1
    assert "less bad" in page.locator("#submit-error").inner_text()
    page.keyboard.press("1")
    assert page.is_checked("#all-bad")
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: u != url and "/label/" in u)
    row = admin.rankings(pid)[-1]
    assert row["order"] == [[a], [b]] and row["all_bad"]

    # A tie only when the labeler says "Tie"; both-bad stays off unless ticked.
    a, b = ids_by_number(page)[1], ids_by_number(page)[2]
    page.click("#choices button[data-choice='tie']")
    assert not page.is_checked("#all-bad")
    page.click("#submit-btn")
    page.wait_for_selector("#done")
    row = admin.rankings(pid)[-1]
    assert sorted(row["order"][0]) == sorted([a, b]) and len(row["order"]) == 1 and not row["all_bad"]
    ctx.close()


def test_logged_out_submit_keeps_the_work_until_logged_in_again(browser, server):
    """#10: an error from the server (here: the session ended in another tab) keeps the work, and
    the same page can send it once the labeler has logged in again."""
    base, admin, _, _ = server
    ctx, page, pid = labeler_page(browser, server, n_prompts=1)
    user = page.locator(".who").inner_text()
    by_n = ids_by_number(page)
    for key in "231":
        page.keyboard.press(key)
    page.check("#unsafe")
    page.fill("textarea[name=rationale]", "two, then three")
    other = ctx.new_page()  # another tab of the same browser: log out there
    other.goto(f"{base}/label")
    other.click("button.link")
    other.wait_for_url(f"{base}/login*")
    url = page.url
    page.click("#submit-btn")
    expect(page.locator("#submit-error")).to_contain_text("logged out")
    assert page.url == url
    assert shown_order(page) == [by_n[2], by_n[3], by_n[1]] and page.is_checked("#unsafe")
    assert admin.rankings(pid) == []
    other.fill("input[name=username]", user)
    other.fill("input[name=password]", "labeler-password")
    other.click("button[type=submit]")
    other.wait_for_url(f"{base}/label/*")
    page.click("#submit-btn")
    page.wait_for_selector("#done")
    (row,) = admin.rankings(pid)
    assert row["order"] == [[by_n[2]], [by_n[3]], [by_n[1]]] and row["unsafe"] and row["rationale"] == "two, then three"
    ctx.close()
