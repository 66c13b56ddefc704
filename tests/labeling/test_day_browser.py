"""A labeler's day (issue 15 item 3) in the real browser (Playwright driving Debian's chromium):
skip by key and button, keys for K = 16, guidelines remembered, markdown rendered and inert,
the progress counter and project name, correcting a submission, changing one's password."""

from __future__ import annotations


import pytest
from labhelp import ARTIFACTS, live_app

from rankloop.labeling.client import LabelingClient, LabelingError
from rankloop.records import Candidate, Prompt

pytestmark = pytest.mark.browser

MARKDOWN = """Explain this **code**:

```python
def f(x):
    return x + 1
```

<script>window.__pwned = 1</script>

<img src=x onerror="window.__pwned = 2">

[click me](javascript:window.__pwned=3) and [docs](https://example.org/docs) and <a href="javascript:window.__pwned=4">raw</a>

<div onmouseover="window.__pwned = 5">a raw HTML block</div>

مرحبا، هذه فقرة بالعربية."""




@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_app(tmp_path_factory.mktemp("day-browser")) as app:
        yield app


_n = iter(range(1, 1000))


def new_project(admin, k=3, n=3, mode="ranking", instructions="Be **kind**.", texts=None, prompt=None):
    i = next(_n)
    p = admin.create_project(f"day project {i}", k=k, mode=mode, overlap=1, instructions=instructions)
    prompts = [Prompt(id=f"d{i}-{j}", text=prompt or f"Prompt {j} of project {i}") for j in range(n)]
    cands = [Candidate(id=f"d{i}-{j}-{c}", prompt_id=f"d{i}-{j}", text=(texts[c] if texts else f"answer {c} to prompt {j}"))
             for j in range(n) for c in range(k)]
    admin.import_candidates(p["id"], prompts, cands)
    return p


def login_page(browser, base, admin, projects, password="labeler-password"):
    user = f"lab{next(_n)}"
    admin.create_user(user, password)
    for p in projects:
        admin.add_member(p["id"], user)
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/label/*")
    return ctx, page, user


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def ids_by_number(page) -> dict[int, str]:
    return {int(li.get_attribute("data-n")): li.get_attribute("data-id") for li in page.locator("#ranking > li").all()}


def test_skip_by_key_and_button_then_counter_and_project_name(browser, server):
    base, admin = server
    p = new_project(admin, n=3)
    ctx, page, _ = login_page(browser, base, admin, [p])
    expect(page.locator("#project-name")).to_have_text(p["name"])
    expect(page.locator("#progress")).to_contain_text("Today: 0 · This project: 0 · Remaining for you: 3")
    first_prompt = page.locator(".prompt .text").inner_text()
    page.keyboard.press("s")
    expect(page.locator("#skip-box")).to_have_attribute("open", "")
    expect(page.locator("#skip-reason")).to_be_focused()
    page.select_option("#skip-reason", "expertise")
    page.fill("#skip-note", "needs a chemist")
    url = page.url
    page.click("#skip-btn")
    page.wait_for_url(lambda u: u != url and "/label/" in u)
    expect(page.locator(".notice")).to_contain_text("Task skipped")
    assert page.locator(".prompt .text").inner_text() != first_prompt
    expect(page.locator("#progress")).to_contain_text("Remaining for you: 2 · Skipped: 1")
    prog = admin.progress(p["id"])
    assert prog["skips"] == 1 and prog["skip_reasons"] == {"expertise": 1}
    for key in ("1", "2", "3"):
        page.keyboard.press(key)
    url = page.url
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: u != url)
    expect(page.locator("#progress")).to_contain_text("Today: 1 · This project: 1 · Remaining for you: 1")
    page.screenshot(path=str(ARTIFACTS / "labeling-day-counter.png"), full_page=True)
    ctx.close()


def test_label_without_a_project_names_each_tasks_project(browser, server):
    base, admin = server
    p1, p2 = new_project(admin, n=1), new_project(admin, n=1)
    ctx, page, _ = login_page(browser, base, admin, [p1, p2])
    seen = []
    for _ in range(2):
        seen.append(page.locator("#project-name").inner_text())
        assert seen[-1] in page.title()
        for key in ("1", "2", "3"):
            page.keyboard.press(key)
        url = page.url
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u, before=url: u != before)
    assert sorted(seen) == sorted([p1["name"], p2["name"]])
    ctx.close()


def test_keys_for_every_k_up_to_16(browser, server):
    base, admin = server
    p = new_project(admin, k=16, n=1)
    ctx, page, _ = login_page(browser, base, admin, [p])
    badges = page.locator("#ranking .badge").all_inner_texts()
    assert badges == list("1234567890ABCDEF")
    expect(page.locator(".help").first).to_contain_text("for 10")
    by_n = ids_by_number(page)
    keys = list("fedcba0987654321")  # worst-numbered first: the reverse of the shown order
    for k in keys:
        page.keyboard.press(k)
    page.screenshot(path=str(ARTIFACTS / "labeling-day-k16.png"), full_page=True)
    page.keyboard.press("Enter")
    page.wait_for_selector("#done")
    (row,) = admin.rankings(p["id"])
    assert row["order"] == [[by_n[n]] for n in range(16, 0, -1)]
    ctx.close()


def test_guidelines_collapse_is_remembered_per_project(browser, server):
    base, admin = server
    p1, p2 = new_project(admin, n=2, instructions="Guide **one**"), new_project(admin, n=1, instructions="Guide two")
    ctx, page, _ = login_page(browser, base, admin, [p1, p2])
    page.goto(f"{base}/label?project_id={p1['id']}")
    expect(page.locator("#guidelines")).to_have_attribute("open", "")
    assert page.locator("#guidelines strong").inner_text() == "one"  # the guidelines are markdown too
    page.click("#guidelines summary")
    page.reload()
    expect(page.locator("#guidelines")).not_to_have_attribute("open", "")
    page.goto(f"{base}/label?project_id={p2['id']}")
    expect(page.locator("#guidelines")).to_have_attribute("open", "")  # another project: its own state
    page.goto(f"{base}/label?project_id={p1['id']}")
    expect(page.locator("#guidelines")).not_to_have_attribute("open", "")
    page.click("#guidelines summary")
    page.reload()
    expect(page.locator("#guidelines")).to_have_attribute("open", "")
    ctx.close()


def test_markdown_is_rendered_and_every_attack_stays_inert(browser, server):
    base, admin = server
    p = new_project(admin, n=1, k=2, mode="pairwise", prompt=MARKDOWN, texts=[MARKDOWN, "שלום, זו תשובה בעברית."])
    ctx, page, _ = login_page(browser, base, admin, [p])
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    prompt = page.locator(".prompt .text")
    assert prompt.locator("strong").inner_text() == "code"
    code = prompt.locator("pre code")
    assert "return x + 1" in code.inner_text()
    assert "monospace" in code.evaluate("e => getComputedStyle(e).fontFamily").lower()
    text = prompt.inner_text()
    assert "<script>window.__pwned = 1</script>" in text and 'onerror="window.__pwned = 2"' in text  # shown, as text
    assert page.locator("main script, main img, main div[onmouseover], main [onerror]").count() == 0
    links = prompt.locator("a")
    assert links.count() == 1 and links.get_attribute("href") == "https://example.org/docs"
    assert set(links.get_attribute("rel").split()) == {"noopener", "noreferrer", "nofollow"}
    assert page.locator("a[href^='javascript']").count() == 0
    rtl = [e.evaluate("e => getComputedStyle(e).direction") for e in prompt.locator("p").all() if "مرحبا" in e.inner_text()]
    assert rtl == ["rtl"]
    hebrew = page.locator("#ranking .text p", has_text="שלום")
    assert hebrew.evaluate("e => getComputedStyle(e).direction") == "rtl"
    assert page.locator("#ranking .text[dir=auto]").count() == 2
    for sel in ("#ranking .text a", ".prompt .text pre", "#ranking .text p"):  # hover/click what an attacker would want
        page.locator(sel).first.hover()
    page.locator(".prompt .text p", has_text="raw HTML block").click()
    page.screenshot(path=str(ARTIFACTS / "labeling-day-markdown.png"), full_page=True)
    assert page.evaluate("window.__pwned") is None and not dialogs
    ctx.close()


def test_correct_a_submission_from_my_recent_submissions(browser, server):
    base, admin = server
    p = new_project(admin, n=2)
    ctx, page, _ = login_page(browser, base, admin, [p])
    by_n = ids_by_number(page)
    for key in ("1", "2", "3"):
        page.keyboard.press(key)
    url = page.url
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: u != url)
    page.click("text=My recent submissions")
    page.wait_for_selector("#recent")
    first = admin.rankings(p["id"])[0]
    expect(page.locator(f"tr[data-ranking='{first['id']}'] .order")).to_have_text(f"{by_n[1]} > {by_n[2]} > {by_n[3]}")
    page.click(f"tr[data-ranking='{first['id']}'] a.edit-link")
    page.wait_for_selector("#task[data-edit]")
    # the page starts from the submitted order, so Enter alone would resubmit it unchanged
    assert [li.get_attribute("data-id") for li in page.locator("#ranking > li").all()] == [by_n[1], by_n[2], by_n[3]]
    assert page.locator("#skip-box").count() == 0
    page.locator("#ranking > li").nth(1).locator(".tie-box").check()  # tie the second with the first
    page.fill("textarea[name=rationale]", "on second thought, a tie")
    page.click("#submit-btn")
    page.wait_for_url("**/label/recent?notice=edited")
    expect(page.locator(".notice")).to_contain_text("Correction saved")
    rows = {r["id"]: r for r in admin.rankings(p["id"])}
    new = next(r for r in rows.values() if r["supersedes_id"] == first["id"])
    assert new["order"] == [[by_n[1], by_n[2]], [by_n[3]]] and new["current"] and not rows[first["id"]]["current"]
    assert new["rationale"] == "on second thought, a tie"
    page.screenshot(path=str(ARTIFACTS / "labeling-day-recent.png"), full_page=True)
    ctx.close()


def test_change_own_password_page(browser, server):
    base, admin = server
    p = new_project(admin, n=1)
    ctx, page, user = login_page(browser, base, admin, [p], password="old-password-1")
    script = LabelingClient(base)
    script.login(user, "old-password-1")
    page.click("header a[href='/account/password']")
    page.fill("input[name=current_password]", "not-my-password")
    page.fill("input[name=new_password]", "new-password-2")
    page.fill("input[name=new_password_again]", "new-password-2")
    page.click("#password-form button[type=submit]")
    expect(page.locator(".error")).to_contain_text("current password is wrong")
    page.fill("input[name=current_password]", "old-password-1")
    page.fill("input[name=new_password]", "new-password-2")
    page.fill("input[name=new_password_again]", "new-password-2")
    page.click("#password-form button[type=submit]")
    expect(page.locator(".notice")).to_contain_text("Password changed")
    with pytest.raises(LabelingError) as e:
        script.me()  # the other session (a script's token) ended
    assert e.value.status == 401
    page.goto(f"{base}/label")  # this one stays
    page.wait_for_url(f"{base}/label/*")
    LabelingClient(base).login(user, "new-password-2")
    ctx.close()
