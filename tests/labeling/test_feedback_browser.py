"""The richer-feedback widgets (issue 15 item 1) in a real browser (Playwright driving Debian's
chromium; never downloads one): a pairwise strength, Likert scores, acceptability, labels, a
comment and which response is unsafe — given with the keyboard alone, sent with the ranking and
stored; labels written by the lead stay text; a project without feedback shows none of it."""

from __future__ import annotations

import pytest

from labhelp import ARTIFACTS, live_app
from rankloop.records import Candidate, Prompt


pytestmark = pytest.mark.browser

EVIL_LABEL = '<img src=x onerror="window.__pwned = 1">Harmful'
LABELS = ["Hallucination", EVIL_LABEL]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_app(tmp_path_factory.mktemp("feedback-browser")) as (base, admin):
        admin.create_user("fay", "fay-password")
        pp = admin.create_project("pairs", mode="pairwise", feedback={"strength_scale": 8, "likert": True,
                                                                      "acceptability": True, "labels": LABELS, "comments": True})
        admin.import_candidates(pp["id"], [Prompt(id="q", text="Which is better?")],
                                [Candidate(id="qa", prompt_id="q", text="left answer"), Candidate(id="qb", prompt_id="q", text="right answer")])
        admin.add_member(pp["id"], "fay")
        rp = admin.create_project("ranked", k=3, feedback={"likert": True})
        admin.import_candidates(rp["id"], [Prompt(id="r", text="Rank these.")],
                                [Candidate(id=f"r{i}", prompt_id="r", text=f"ranked answer {i}") for i in range(3)])
        admin.add_member(rp["id"], "fay")
        plain = admin.create_project("plain", mode="pairwise")
        admin.import_candidates(plain["id"], [Prompt(id="s", text="Plain pair.")],
                                [Candidate(id="sa", prompt_id="s", text="one"), Candidate(id="sb", prompt_id="s", text="two")])
        admin.add_member(plain["id"], "fay")
        yield base, admin, pp["id"], rp["id"], plain["id"]


def login(page, base, project_id):
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "fay")
    page.fill("input[name=password]", "fay-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/label**")
    page.goto(f"{base}/label?project_id={project_id}")
    page.wait_for_url(f"{base}/label/*")


def test_pairwise_strength_ratings_and_unsafe_by_keyboard(browser, server):  # noqa: F811
    base, admin, pid, _, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = ctx.new_page()
    login(page, base, pid)
    # the lead's labels are text, never markup
    assert page.locator("#feedback img").count() == 0 and page.evaluate("window.__pwned") is None
    assert EVIL_LABEL in page.locator("fieldset.rate").first.inner_text()
    assert [t.strip() for t in page.locator("#strength label").all_inner_texts()] == [
        "negligibly better / unsure", "slightly better", "better", "significantly better"]
    assert page.locator("#which-unsafe").is_hidden()
    a_id = page.locator("#ranking > li[data-n='1']").get_attribute("data-id")
    b_id = page.locator("#ranking > li[data-n='2']").get_attribute("data-id")

    page.keyboard.press("2")  # B is better
    url = page.url
    page.keyboard.press("Enter")  # no strength yet: refused on the page, nothing sent
    assert "How much better" in page.locator("#submit-error").inner_text()
    assert page.url == url and admin.rankings(pid) == []
    # the message put the focus on the scale: the arrow keys pick a degree
    assert page.evaluate("document.activeElement.name") == "fb-strength"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # "better": 3 of 4
    assert page.locator("input[name=fb-strength]:checked").get_attribute("value") == "3"

    rate_a, rate_b = page.locator("fieldset.rate[data-n='1']"), page.locator("fieldset.rate[data-n='2']")
    rate_a.locator("input.score").first.focus()
    page.keyboard.press("Space")  # 1
    page.keyboard.press("ArrowRight")  # 2
    rate_b.locator("input.score").first.focus()
    page.keyboard.press("Space")
    for _ in range(5):
        page.keyboard.press("ArrowRight")  # 6
    rate_a.locator("input.ok").nth(1).focus()
    page.keyboard.press("Space")  # A: not acceptable
    rate_a.locator("input.label").nth(1).focus()
    page.keyboard.press("Space")  # A: the lead's second label
    rate_a.locator("textarea.comment").fill("  made up a <b>date</b>  ")
    page.locator("#unsafe").focus()
    page.keyboard.press("Space")
    assert page.locator("#which-unsafe").is_visible()
    page.locator("#which-unsafe input.unsafe-id").first.focus()
    page.keyboard.press("Space")  # A is the unsafe one
    page.screenshot(path=str(ARTIFACTS / "labeling-feedback-pairwise.png"), full_page=True)
    page.locator("input[name=fb-strength]:checked").focus()
    page.keyboard.press("Enter")  # Enter on the scale submits
    page.wait_for_url(lambda u: u != url)

    [row] = admin.rankings(pid)
    assert row["order"] == [[b_id], [a_id]] and (row["strength"], row["strength_scale"]) == (3, 8)
    assert row["margin"] == pytest.approx(2 / 3) and row["unsafe"] and row["unsafe_ids"] == [a_id]
    got = {r["candidate_id"]: r for r in admin.ratings(pid)}
    assert (got[a_id]["score"], got[a_id]["acceptable"], got[a_id]["labels"], got[a_id]["comment"]) == (
        2, False, [EVIL_LABEL], "made up a <b>date</b>")
    assert (got[b_id]["score"], got[b_id]["acceptable"], got[b_id]["labels"], got[b_id]["comment"]) == (6, None, [], None)
    ctx.close()


def test_ranking_likert_and_a_plain_project_shows_nothing(browser, server):  # noqa: F811
    base, admin, _, rid, plain = server
    ctx = browser.new_context(viewport={"width": 390, "height": 844})  # phone width: the panel still fits
    page = ctx.new_page()
    login(page, base, rid)
    assert page.locator("#strength").count() == 0  # a strength is for pairwise projects only
    n_to_id = {int(li.get_attribute("data-n")): li.get_attribute("data-id") for li in page.locator("#ranking > li").all()}
    assert [fs.get_attribute("data-id") for fs in page.locator("fieldset.rate").all()] == [n_to_id[n] for n in (1, 2, 3)]
    assert [t.strip() for t in page.locator("fieldset.rate legend").all_inner_texts()] == ["Response 1", "Response 2", "Response 3"]
    for n, score in ((1, 7), (3, 4)):
        page.locator(f"fieldset.rate[data-n='{n}'] input.score[value='{score}']").check()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    page.screenshot(path=str(ARTIFACTS / "labeling-feedback-ranking-phone.png"), full_page=True)
    page.evaluate("document.activeElement.blur()")  # keys typed into a radio group stay there: leave it
    for key in ("1", "3", "2"):
        page.keyboard.press(key)
    url = page.url
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: u != url)
    got = sorted((r["candidate_id"], r["score"]) for r in admin.ratings(rid))
    assert got == sorted([(n_to_id[1], 7), (n_to_id[3], 4)])  # the unrated response sends nothing

    page.goto(f"{base}/label?project_id={plain}")
    page.wait_for_url(f"{base}/label/*")
    assert page.locator("#strength, fieldset.rate").count() == 0 and page.locator("#which-unsafe").is_hidden()
    page.keyboard.press("1")
    url = page.url
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: u != url)
    [row] = admin.rankings(plain)
    assert row["strength"] is None and row["unsafe_ids"] == []
    ctx.close()
