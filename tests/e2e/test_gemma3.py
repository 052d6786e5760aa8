"""Gemma 3 270M (a real Q4_K_M GGUF: sliding-window layers, SentencePiece vocabulary) served end to
end through the openai client: chat, streaming, n = 2. The file is the base model, not the
instruction-tuned one, so its chat answers are not graded; the chat reply must be exactly the
greedy continuation of the templated prompt (which tests/engine/test_gemma3_gguf.py checks
against transformers), with no template tokens in the text."""
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TEMPLATED = "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"


def test_gemma3_chat_is_the_templated_continuation(gemma3_client):
    chat = gemma3_client.chat.completions.create(model="gemma-3-270m", messages=QUESTION, temperature=0,
                                                 max_tokens=16)
    plain = gemma3_client.completions.create(model="gemma-3-270m", prompt=TEMPLATED, temperature=0, max_tokens=16)
    answer = chat.choices[0].message.content
    assert answer and answer == plain.choices[0].text
    assert "<end_of_turn>" not in answer and "<start_of_turn>" not in answer
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens  # one <bos>, the template rendered as written
    assert chat.choices[0].finish_reason == plain.choices[0].finish_reason


def test_gemma3_completion(gemma3_client):
    resp = gemma3_client.completions.create(model="gemma-3-270m", prompt="The capital of France is", temperature=0,
                                            max_tokens=8)
    assert "France" in resp.choices[0].text or "Paris" in resp.choices[0].text


def test_gemma3_stream_equals_the_full_answer(gemma3_client):
    full = gemma3_client.chat.completions.create(model="gemma-3-270m", messages=QUESTION, temperature=0,
                                                 max_tokens=12)
    stream = gemma3_client.chat.completions.create(model="gemma-3-270m", messages=QUESTION, temperature=0,
                                                   max_tokens=12, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == full.choices[0].message.content


def test_gemma3_two_choices(gemma3_client):
    resp = gemma3_client.chat.completions.create(model="gemma-3-270m", messages=QUESTION, n=2, temperature=1.0,
                                                 seed=7, max_tokens=12)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert all(c.message.content for c in resp.choices)
    assert resp.choices[0].message.content != resp.choices[1].message.content
