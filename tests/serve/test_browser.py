"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against the
real app served by uvicorn on loopback over a small Flickr8k index built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MMRAG_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="pip install playwright (its driver; no browser download)")
pytest.importorskip("fastapi", reason="the service needs fastapi")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from serve_helpers import build_serve_index, running_server  # noqa: E402

from mmrag.serve import ServeConfig, create_app  # noqa: E402

TIMEOUT_MS = 60_000  # a loaded 2-core machine can take seconds per model call


@pytest.fixture(scope="module")
def site(tmp_path_factory, flickr8k_dir, effnet_minilm):
    idx, items = build_serve_index(flickr8k_dir, tmp_path_factory.mktemp("browser") / "idx", effnet_minilm)
    app = create_app(idx, ServeConfig(default_k=8), encoder=effnet_minilm)
    with running_server(app) as base:
        yield base, items
    app.state.mmrag.service.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        except Exception as e:  # e.g. a Chromium too old for this Playwright
            pytest.skip(f"cannot start {CHROMIUM} with Playwright: {e}")
        yield b
        b.close()


@pytest.fixture
def page(browser, site):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(site[0] + "/")
    expect(pg.locator("body")).to_have_attribute("data-ready", "true")
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_text_search_from_the_keyboard(page, site):
    _, items = site
    page.keyboard.press("Tab")  # skip link
    page.keyboard.press("Tab")  # first tab: Search
    page.locator("#search-text").focus()
    page.keyboard.type(items[0].captions[0])
    page.keyboard.press("Enter")
    results = page.locator("#search-results > li")
    expect(results).to_have_count(8)  # the server's default_k
    expect(page.locator("#search-status")).to_contain_text("8 images")
    first = results.first
    expect(first.locator(".score")).to_contain_text("fused")  # a text query on a captioned index: hybrid
    assert first.locator(".caption").inner_text().strip()
    # every thumbnail really loaded (naturalWidth > 0)
    page.wait_for_function("[...document.querySelectorAll('#search-results img')].every(i => i.complete && i.naturalWidth > 0)")
    ids = results.evaluate_all("els => els.map(e => e.dataset.id)")
    assert items[0].id in ids[:5]


def test_image_upload_and_more_like_this(page, site):
    _, items = site
    it = items[4]
    page.set_input_files("#search-image", str(it.path))
    page.click("#search-submit")
    results = page.locator("#search-results > li")
    expect(results.first).to_have_attribute("data-id", it.id)
    expect(results.first.locator(".score")).to_contain_text("1.000")
    # "More like this" on the second result queries by that image's id
    second = results.nth(1).get_attribute("data-id")
    results.nth(1).get_by_role("button", name="Find images like").click()
    expect(results.first).to_have_attribute("data-id", second)


def test_caption_an_uploaded_image(page, site):
    _, items = site
    page.get_by_role("tab", name="Caption").click()
    page.set_input_files("#caption-image", str(items[2].path))
    page.click("#caption-submit")
    expect(page.locator("#caption-text")).not_to_be_empty()
    expect(page.locator("#caption-result .evidence li")).to_have_count(10)


def test_two_chat_rounds_change_the_ranking(page, site):
    page.get_by_role("tab", name="Search").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # Search -> Caption -> Chat, with the arrow keys
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
    page.fill("#chat-description", "a dog outside")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-status")).to_contain_text("Round 0")
    expect(page.locator("#chat-results > li")).to_have_count(10)
    q0 = page.locator("#chat-question").inner_text()
    assert q0.strip()
    ranking0 = page.locator("#chat-results > li").evaluate_all("els => els.map(e => e.dataset.id)")

    # one-click answers: Yes / No, or the two options and Neither for an either-or question
    quick = page.locator("#chat-quick button")
    labels = quick.all_inner_texts()
    assert labels == ["Yes", "No"] or (len(labels) == 3 and labels[2] == "Neither"
                                       and all(o.lower() in q0.lower() for o in labels[:2]))
    first = labels[0].lower()
    quick.first.click()
    expect(page.locator("#chat-status")).to_contain_text("Round 1")
    page.fill("#chat-answer", "no, it is on the grass")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-status")).to_contain_text("Round 2")
    log = page.locator("#chat-log > li")
    expect(log).to_have_count(3)  # description + two answered questions
    expect(log.nth(1)).to_contain_text(f"Q: {q0}")
    expect(log.nth(1)).to_contain_text(f"A: {first}")
    ranking2 = page.locator("#chat-results > li").evaluate_all("els => els.map(e => e.dataset.id)")
    moves = page.locator("#chat-results .move").all_inner_texts()
    assert len(moves) == 10  # each card says how its rank changed
    assert ranking2 != ranking0 or set(moves) == {"="}


def test_errors_are_shown_not_thrown(page):
    page.set_input_files("#search-image", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                 "buffer": b"not an image"}])
    page.click("#search-submit")
    status = page.locator("#search-status")
    expect(status).to_contain_text("400")
    expect(status).to_have_attribute("role", "alert")


def test_a_failed_upload_shows_its_error_and_no_old_results(page, site):
    """#16 item 12: after a failed upload the page kept the previous results under the error."""
    _, items = site
    page.fill("#search-text", items[0].captions[0])
    page.click("#search-submit")
    expect(page.locator("#search-results > li")).to_have_count(8)
    page.fill("#search-text", "")
    page.set_input_files("#search-image", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                 "buffer": b"not an image"}])
    page.click("#search-submit")
    status = page.locator("#search-status")
    expect(status).to_have_attribute("role", "alert")
    expect(status).to_contain_text("not an image")
    expect(page.locator("#search-results > li")).to_have_count(0)
    text = status.inner_text()
    for internal in ("<bytes>", "undefined", "null", "[object", "Traceback"):
        assert internal not in text, text


def test_narrow_screen_has_no_horizontal_scroll(browser, site):
    ctx = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(site[0] + "/")
    expect(pg.locator("body")).to_have_attribute("data-ready", "true")
    pg.fill("#search-text", "children playing")
    pg.keyboard.press("Enter")
    expect(pg.locator("#search-results > li")).to_have_count(8)
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"page is {width}px wide on a 360px screen"
    box = pg.locator("#search-results > li").first.bounding_box()
    assert box["width"] <= 360
    ctx.close()



def test_nonsense_query_says_no_good_match(page, site):
    _, items = site
    page.locator("#search-text").fill("qwxz zzyqv")
    page.locator("#search-submit").click()
    expect(page.locator("#search-status")).to_contain_text("images")
    expect(page.locator("#search-nomatch")).to_be_visible()
    expect(page.locator("#search-nomatch")).to_contain_text("No good match")
    expect(page.locator("#search-results > li").first.locator(".relevance")).to_contain_text("match")
    page.locator("#search-text").fill(items[0].captions[0])
    page.locator("#search-submit").click()
    expect(page.locator("#search-nomatch")).to_be_hidden()


def test_close_results_offer_a_question_whose_answer_reranks_them(page, site):
    page.fill("#search-text", "a photo of something outside")  # vague: the top results are close
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as resp:
        page.click("#search-submit")
    clarify = resp.value.json()["clarify"]
    assert clarify is not None
    box = page.locator("#search-clarify")
    expect(box).to_be_visible()
    expect(page.locator("#search-clarify-question")).to_contain_text(clarify["question"][1:])
    buttons = page.locator("#search-clarify-options button")
    expect(buttons).to_have_count(len(clarify["options"]))
    option = clarify["options"][0]
    buttons.first.click()  # re-ranked on the page, with no new request
    results = page.locator("#search-results > li")
    expect(results).to_have_count(8)
    assert results.evaluate_all("els => els.map(e => e.dataset.id)") == option["hit_ids"]
    dimmed = page.locator("#search-results > li.dimmed").evaluate_all("els => els.map(e => e.dataset.id)")
    assert sorted(dimmed) == sorted(set(option["hit_ids"]) - set(option["kept_ids"]))
    expect(buttons.first).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#search-status")).to_contain_text(f"Re-ranked for “{option['answer']}”")
    # the question can go on as a chat over the same description
    page.click("#search-clarify-chat")
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#chat-status")).to_contain_text("Round 0")
    expect(page.locator("#chat-log > li").first).to_contain_text("a photo of something outside")
