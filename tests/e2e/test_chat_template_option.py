"""--chat-template: a Jinja2 file replaces the model's own template (a server of its own, on a
tiny random model: only the rendering is under test)."""
from __future__ import annotations

import httpx
import pytest

from tests.server_process import running_server
from tests.tiny_models import write_tiny_hf_model

TEMPLATE = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
            "{% if enable_thinking %}[think]\n{% endif %}{% if add_generation_prompt %}[assistant] {% endif %}")
KEY = "template-test-key"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def custom_http(tmp_path_factory):
    folder = tmp_path_factory.mktemp("template")
    (folder / "template.jinja").write_text(TEMPLATE)
    model = write_tiny_hf_model(str(folder / "tiny"), seed=0)
    args = ["--model", model, "--chat-template", str(folder / "template.jinja"), "--served-model-name", "custom",
            "--max-model-len", "512", "--kv-cache-memory-gb", "0.1", "--max-num-seqs", "4"]
    with running_server(args, {"GPTSERVE_API_KEY": KEY}, log_path=folder / "server.log") as (url, _, _):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
            yield client


def rendered(http, **fields) -> str:
    tokens = http.post("/tokenize", json={"model": "custom", "messages": MESSAGES, **fields}).json()["tokens"]
    return http.post("/detokenize", json={"model": "custom", "tokens": tokens}).json()["prompt"]


def test_the_file_replaces_the_models_template(custom_http):
    assert rendered(custom_http) == "[system] Be brief.\n[user] Hi\n[assistant] "
    assert rendered(custom_http, add_generation_prompt=False) == "[system] Be brief.\n[user] Hi\n"
    assert rendered(custom_http, chat_template_kwargs={"enable_thinking": True}).endswith("[think]\n[assistant] ")


def test_chat_uses_it(custom_http):
    count = custom_http.post("/tokenize", json={"messages": MESSAGES}).json()["count"]
    r = custom_http.post("/v1/chat/completions", json={"model": "custom", "messages": MESSAGES, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == count
