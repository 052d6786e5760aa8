"""Hostile inputs that once reached an engine or a traceback: each is a 400 with OpenAI's body."""
from __future__ import annotations

import pytest

from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error

MSG = [{"role": "user", "content": "hi"}]
CHAT, COMP = "/v1/chat/completions", "/v1/completions"


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSG, "logit_bias": {"150": 5}}, "logit_bias"),
    (COMP, {"prompt": "x", "logit_bias": {"99": -100, "100": 1}}, "logit_bias"),
    (CHAT, {"messages": MSG, "stop_token_ids": [1, 200]}, "stop_token_ids"),
])
def test_token_ids_past_the_models_vocabulary(path, body, param):
    """The model's logits (100 wide here) are narrower than the tokenizer (259 ids): ids are
    checked against the model, whose logits the sampler indexes, not the tokenizer."""
    engine = FakeEngine()
    engine.model_config.vocab_size = 100
    with make_client(engine) as client:
        check_error(client.post(path, json={**body, "max_tokens": 2}), 400, param=param)
        assert not engine.requests  # nothing reached the engine
        ok = client.post(path, json={**body, "max_tokens": 2, "logit_bias": {"99": 1}, "stop_token_ids": [99]})
        assert ok.status_code == 200, ok.text
