"""Tokenizer: GGUF-built vocabulary vs an independent reference, chat templates, token bytes."""
import os

import pytest

from engine.loader import default_model_path
from engine.tokenizer import Tokenizer
from tests.tiny_models import make_tiny_tokenizer_files, write_tiny_gguf

TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    "def f(x):\n    return x**2  # square\n",
    "The year 2024 had 365 days; pi=3.14159, n=12345678.",
    "日本語のテキストと中文，한국어",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "café naïve résumé Ñandú Ærøskøbing",
    "  leading,  and   multiple    spaces\n\n\ttabs\r\nCRLF  ",
    "I'm sure they'll say it's fine, aren't we?",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "",
]
SMOLLM_CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def smollm():
    return Tokenizer.load(default_model_path())


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF tokenizer builder: reads the file independently of our code."""
    transformers = pytest.importorskip("transformers")
    path = default_model_path()
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def test_smollm_attributes(smollm):
    assert smollm.vocab_size == 49152
    assert smollm.bos_token_id == 1 and smollm.add_bos_token is False
    assert smollm.eos_token_ids == [2]  # <|im_end|>; <|endoftext|> is not in the template
    assert smollm.encode("<|im_start|>") == [1]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(smollm, reference, text):
    assert smollm.encode(text) == reference.encode(text)
    assert smollm.decode(smollm.encode(text), skip_special_tokens=False) == text


def test_digits_split_like_llama_cpp(smollm):
    """tokenizer.ggml.pre "smollm": llama.cpp splits every digit first (\\p{N}), then GPT-2's regex,
    exactly like SmolLM2's tokenizer.json (Digits(individual_digits) + ByteLevel). transformers'
    GGUF builder skips the digit split, so for whitespace before a digit it differs: "  3" is
    "ĠĠ" + "3" here and in llama.cpp, "Ġ" + "Ġ" + "3" there."""
    assert smollm.encode("x 1 2  3") == [104, 216, 33, 216, 34, 256, 35]


def test_chat_template_smollm(smollm):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert smollm.apply_chat_template(messages) == SMOLLM_CHAT
    assert smollm.apply_chat_template(messages, add_generation_prompt=False) == SMOLLM_CHAT[: -len("<|im_start|>assistant\n")]


def test_chat_template_helpers_and_errors(smollm, tmp_path):
    tok = Tokenizer.load(default_model_path(), chat_template="{{ tools | tojson }}|{{ strftime_now('%Y') | length }}|{{ bos_token }}|{{ x }}")
    assert tok.apply_chat_template([], tools=[{"name": "é", "b": 1}], x=7) == '[{"name": "é", "b": 1}]|4|<|im_start|>|7'
    with pytest.raises(ValueError, match="boom"):
        Tokenizer.load(default_model_path(), chat_template="{{ raise_exception('boom') }}").apply_chat_template([])
    with pytest.raises(ValueError):  # the sandbox refuses dunder attribute access
        Tokenizer.load(default_model_path(), chat_template="{{ ''.__class__.__mro__ }}").apply_chat_template([])
    with pytest.raises(ValueError):
        Tokenizer.load(default_model_path(), chat_template="{{ messages.append(1) }}").apply_chat_template([])
    folder = make_tiny_tokenizer_files(str(tmp_path / "t"))
    os.remove(os.path.join(folder, "tokenizer_config.json"))
    with pytest.raises(ValueError, match="model has no chat template"):
        Tokenizer.load(folder).apply_chat_template([{"role": "user", "content": "hi"}])


def test_token_bytes_and_text(smollm):
    paris = smollm.encode(" Paris")
    assert len(paris) == 1 and smollm.token_text(paris[0]) == " Paris" and smollm.token_bytes(paris[0]) == b" Paris"
    ids = smollm.encode("😀 日本")
    assert b"".join(smollm.token_bytes(i) for i in ids) == "😀 日本".encode()
    assert smollm.token_bytes(2) == b"<|im_end|>"


def test_tiny_gguf_tokenizer_equals_hf_folder(tmp_path):
    folder = make_tiny_tokenizer_files(str(tmp_path / "hf"))
    from_hf = Tokenizer.load(folder)
    from_gguf = Tokenizer.load(write_tiny_gguf(str(tmp_path / "m.gguf")))
    for text in TEXTS:
        assert from_gguf.encode(text) == from_hf.encode(text), text
    assert from_gguf.eos_token_ids == from_hf.eos_token_ids == [2]
    assert from_gguf.vocab_size == from_hf.vocab_size == 512
    messages = [{"role": "user", "content": "hi"}]
    assert from_gguf.apply_chat_template(messages) == from_hf.apply_chat_template(messages)
    assert from_hf.decode(from_hf.encode("<|im_end|>hi")) == "hi"


def test_parse_special_false_reads_special_tokens_as_text(smollm):
    text = "<|im_start|>system"
    assert len(smollm.encode(text, add_special_tokens=False)) == 2
    plain = smollm.encode(text, add_special_tokens=False, parse_special=False)
    assert len(plain) > 2 and smollm.decode(plain, skip_special_tokens=True) == text
    assert "<|im_start|>" in smollm.special_token_texts and "<|im_end|>" in smollm.special_token_texts
