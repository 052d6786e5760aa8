"""The built-in chat page at "/" in a real headless Chromium against a real gptserve process:
a streamed answer grows on screen, stop aborts the generation on the server, the model picker
changes the request's model, the key and the conversation live in the browser, and model output
cannot inject markup.

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` package (test extras; it drives
the system browser, nothing is downloaded). `make test` installs both when it runs as root;
otherwise the module skips with the reason. GPTSERVE_UPDATE_SCREENSHOT=1 rewrites docs/chat-page.png.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import API_KEY, REPO, SERVED_NAMES

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = os.environ.get("GPTSERVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("chromium is not installed (apt-get install chromium; `make test` does it as root)",
                allow_module_level=True)

MODELS = SERVED_NAMES  # all the built-in model; the picker lists them in this order
# the closed network: no background fetches, updates, sync or QUIC probes
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = REPO / "docs" / "chat-page.png"


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 720})
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def page(server, browser_context):
    """The chat page with empty localStorage (no key, no conversation)."""
    page = browser_context.new_page()
    page.goto(server.url + "/")
    page.evaluate("localStorage.clear()")
    page.reload()
    yield page
    page.close()


def enter_key(page, key: str = API_KEY, *, wait_for_models: bool = True) -> None:
    page.fill("#api-key", key)
    page.press("#api-key", "Tab")  # "change" reloads the model list with the key
    if wait_for_models:
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")


def set_value(page, selector: str, value) -> None:
    """Set a range/number input as a person would, firing the input event the page listens to."""
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                          str(value))


def ask(page, question: str) -> None:
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")


def answer(page):
    return page.locator(".message.assistant").last


def test_page_is_public_but_the_api_needs_the_key(server, page):
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    for asset in ("app.js", "markdown.js", "style.css"):
        assert httpx.get(f"{server.url}/{asset}", timeout=10).status_code == 200
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401

    page.wait_for_selector("#error:not([hidden])")
    assert "API key needed" in page.inner_text("#error")
    enter_key(page, "wrong-key", wait_for_models=False)
    page.wait_for_function("document.querySelector('#error').textContent.includes('rejected')")
    assert page.locator("#model option").count() == 0
    enter_key(page)
    assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == MODELS
    assert page.is_hidden("#error")
    # kept in the browser: a reload still has the key and the models
    page.reload()
    page.wait_for_function(f"document.querySelectorAll('#model option').length === {len(MODELS)}")
    assert page.input_value("#api-key") == API_KEY


def test_page_waits_while_the_model_loads(server, browser_context):
    """/v1/models answers 503 while the weights load (here: the first call, intercepted): the
    page says so and asks again until the list comes."""
    page = browser_context.new_page()
    page.add_init_script(f"localStorage.setItem('gptserve.settings', JSON.stringify({{apiKey: '{API_KEY}'}}))")
    calls = []

    def models(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=503, content_type="application/json",
                          body='{"error": {"message": "The models are still loading.", "type": "server_error"}}')
        else:
            route.continue_()

    page.route("**/v1/models", models)
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#error').textContent.includes('loading')")
    page.wait_for_function(f"document.querySelectorAll('#model option').length === {len(MODELS)}")
    assert page.is_hidden("#error") and len(calls) >= 2
    page.close()


def test_streamed_answer_grows_and_renders_markdown(server, page, tmp_path):
    enter_key(page)
    set_value(page, "#temperature", 0)
    set_value(page, "#max-tokens", 48)
    ask(page, "Write a Python function that adds two numbers.")
    page.wait_for_selector(".message.assistant[data-state=streaming]")

    lengths = []  # visible answer length, sampled while it streams
    deadline = time.monotonic() + 40
    while answer(page).get_attribute("data-state") == "streaming" and time.monotonic() < deadline:
        lengths.append(len(answer(page).inner_text()))
        time.sleep(0.05)
    assert answer(page).get_attribute("data-state") == "done", page.inner_text("#error")
    final = answer(page).locator(".content").inner_text()
    assert final.strip()
    growth = sorted(set(n for n in lengths if n > 0))
    assert len(growth) >= 3, f"the answer did not grow on screen while streaming: {lengths}"
    assert growth[0] < len(final) // 2, "most of the answer arrived at once"
    assert "def " in final and page.locator(".message.assistant pre code").count() >= 1, final
    assert page.locator(".message.user").inner_text() == "Write a Python function that adds two numbers."
    assert "tokens/s" in page.inner_text("#status")

    page.screenshot(path=str(tmp_path / "chat-page.png"))
    if os.environ.get("GPTSERVE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

    # the conversation survives a reload; "New chat" clears it
    page.reload()
    assert answer(page).locator(".content").inner_text() == final
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    page.reload()
    assert page.locator(".message").count() == 0


def test_stop_aborts_the_generation_on_the_server(server, page):
    enter_key(page)
    set_value(page, "#temperature", 0)  # greedy: the same long story (200+ tokens) every run
    set_value(page, "#max-tokens", 1800)
    ask(page, "Write a very long story about a dragon who learns to bake bread. Make it long and detailed.")
    page.wait_for_function("(document.querySelector('.message.assistant .content')?.textContent || '').length > 20")
    assert page.is_visible("#stop") and page.is_hidden("#send")
    assert server.metrics()["gptserve:num_requests_running"] == 1  # it is generating right now

    page.click("#stop")
    page.wait_for_selector(".message.assistant[data-state=stopped]")
    assert page.is_visible("#send") and page.is_hidden("#stop")
    stopped_text = answer(page).inner_text()
    deadline = time.monotonic() + 5  # the server sees the disconnect and aborts the request
    while (running := server.metrics()["gptserve:num_requests_running"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running == 0
    tokens = server.metrics()["gptserve:generation_tokens_total"]
    time.sleep(1.0)
    after = server.metrics()
    assert after["gptserve:generation_tokens_total"] == tokens, "the server kept generating after stop"
    assert after["gptserve:num_requests_waiting"] == 0
    assert after["gptserve:kv_cache_usage_perc"] == 0
    assert answer(page).inner_text() == stopped_text, "text kept arriving after stop"
    assert "stopped" in answer(page).locator(".meta").inner_text()


def test_model_picker_switches_the_requests_model(server, page):
    enter_key(page)
    set_value(page, "#max-tokens", 8)
    page.select_option("#model", MODELS[1])
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request_info:
        ask(page, "Say hello.")
    body = request_info.value.post_data_json
    assert body["model"] == MODELS[1] and body["stream"] is True and body["max_tokens"] == 8
    assert request_info.value.headers["authorization"] == f"Bearer {API_KEY}"
    page.wait_for_selector(".message.assistant[data-state=done]")
    assert answer(page).get_attribute("data-model") == MODELS[1]  # the model the stream named

    page.select_option("#model", MODELS[0])
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request_info:
        ask(page, "And goodbye.")
    body = request_info.value.post_data_json
    assert body["model"] == MODELS[0]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]  # the history goes along
    page.wait_for_selector(".message.assistant >> nth=1")
    page.wait_for_function("document.querySelectorAll('.message.assistant[data-state=done]').length === 2")
    assert answer(page).get_attribute("data-model") == MODELS[0]
    page.reload()
    page.wait_for_function(f"document.querySelectorAll('#model option').length === {len(MODELS)}")
    assert page.input_value("#model") == MODELS[0]


def test_system_prompt_and_sampling_settings_are_sent(server, page):
    enter_key(page)
    page.fill("#system-prompt", "You are terse.")
    set_value(page, "#temperature", 0.3)
    set_value(page, "#top-p", 0.9)
    set_value(page, "#max-tokens", 4)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request_info:
        ask(page, "Hi")
    body = request_info.value.post_data_json
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.9, 4)
    page.wait_for_selector(".message.assistant[data-state=done]")


def test_model_output_cannot_inject_markup(server, page):
    hostile = ("**bold** and *it* <img src=x onerror=\"window.__xss=1\"> <script>window.__xss=2</script>\n"
               "[bad](javascript:window.__xss=3) [good](https://example.com/a?b=1&c=2)\n\n"
               "- one\n- two\n\n```html\n<b onmouseover=alert(1)>x</b>\n```\n")
    page.evaluate("c => localStorage.setItem('gptserve.conversation', JSON.stringify(c))",
                  [{"role": "user", "content": "<i>hi</i>"}, {"role": "assistant", "content": hostile}])
    page.reload()
    content = answer(page).locator(".content")
    assert content.locator("strong").inner_text() == "bold"
    assert content.locator("em").inner_text() == "it"
    assert content.locator("li").all_inner_texts() == ["one", "two"]
    assert content.locator("img, script, b").count() == 0
    assert "<img src=x" in content.inner_text() and "<b onmouseover" in content.locator("pre code").inner_text()
    hrefs = content.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs == ["https://example.com/a?b=1&c=2"]
    assert page.evaluate("window.__xss") is None
    assert page.locator(".message.user").inner_text() == "<i>hi</i>"
