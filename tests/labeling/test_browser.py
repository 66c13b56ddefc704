"""The ranking page in a real browser (Playwright driving Debian's chromium; never downloads one):
log in, rank by keyboard and by dragging, submit, get the next task, XSS stays text, phone width,
screenshots kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from labhelp import ADMIN, ARTIFACTS, free_port, start_server
from rankloop.labeling.client import LabelingClient
from rankloop.records import Candidate, Prompt

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RANKLOOP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
LONG = "A long answer that must stay readable. " * 120


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set RANKLOOP_CHROMIUM); never downloading one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    port = free_port()
    proc = start_server(f"sqlite:///{d / 'labels.db'}", port, d / "server.log")
    base = f"http://127.0.0.1:{port}"
    admin = LabelingClient(base)
    admin.login(*ADMIN)
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
    proc.kill()
    proc.wait(10)


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
