"""IncrementalDetokenizer: UTF-8 safe deltas, O(1) windows, stop strings across tokens."""
import random

import pytest

from engine.detokenizer import IncrementalDetokenizer
from engine.loader import default_model_path
from engine.tokenizer import Tokenizer

PIECES = ["Hello", " world", "!", " 😀", "🎉👍🏽", " 日本語", "の", "テキスト", " café", " naïve", "\n", "  ", "123",
          " résumé", "👨‍👩‍👧", " the", " capital", " of", " France", " is", " Paris", ".", "<|im_end|>", "中文"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(default_model_path())


def run(tok, ids, prompt=(), chunk=1, **kwargs):
    """Feed ids in chunks; return (deltas, stop, flushed)."""
    detok = IncrementalDetokenizer(tok, list(prompt), **kwargs)
    deltas, stop = [], None
    for i in range(0, len(ids), chunk):
        delta, stop = detok.step(ids[i : i + chunk])
        deltas.append(delta)
        assert not delta.endswith("\ufffd")  # never half a character (random ids may hold invalid bytes mid-text)
        if stop is not None:
            break
    flushed = detok.flush()
    assert detok.output_text == "".join(deltas) + flushed
    return deltas, stop, flushed


def test_random_streams_concatenate_to_decode(tok):
    rng = random.Random(0)
    prompt = tok.encode("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n")
    for _ in range(60):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25)))
        ids = tok.encode(text)
        deltas, _, flushed = run(tok, ids, prompt, chunk=rng.randint(1, 3))
        assert "\ufffd" not in "".join(deltas) + flushed and "".join(deltas) + flushed == tok.decode(ids)
        # also random single tokens, which include byte pieces of multi-byte characters
        ids += [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 5))]
        for skip in (True, False):
            deltas, stop, flushed = run(tok, ids, prompt, chunk=rng.randint(1, 3), skip_special_tokens=skip)
            assert stop is None
            expected = tok.decode(ids, skip_special_tokens=skip)
            if ends_mid_character(tok, ids):  # a cut character is dropped, not shown as U+FFFD
                expected = expected.removesuffix("\ufffd")
            assert "".join(deltas) + flushed == expected


def ends_mid_character(tok, ids) -> bool:
    """The ids' bytes end with a UTF-8 lead byte followed by fewer continuation bytes than it needs."""
    data = b"".join(tok.token_bytes(i) for i in ids)[-4:]
    for back in range(1, len(data) + 1):
        byte = data[-back]
        if byte < 0x80 or byte >= 0xF8:
            return False
        if byte >= 0xC0:  # a lead byte: 2, 3 or 4 bytes in all
            return back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4)
    return False


def test_stream_cut_mid_character_drops_the_partial_character(tok):
    """max_tokens cutting "🌍🌐🌐" after the first byte tokens of the last emoji: no U+FFFD at the end."""
    ids = tok.encode("🌍🌐🌐", add_special_tokens=False)
    for cut in range(1, len(ids) + 1):
        deltas, _, flushed = run(tok, ids[:cut])
        text = "".join(deltas) + flushed
        assert "\ufffd" not in text, (cut, text)
        assert "🌍🌐🌐".startswith(text) and len(text) == sum(1 for _ in range(cut) if (_ + 1) % 3 == 0)


def test_emoji_split_across_tokens_is_held(tok):
    ids = tok.encode("a😀")
    assert len(ids) >= 3  # "a" then the emoji's bytes over several byte-level tokens
    deltas, _, flushed = run(tok, ids)
    assert deltas[0] == "a" and all(d == "" for d in deltas[1:-1]) and deltas[-1] == "😀" and flushed == ""


def test_stop_string_spanning_tokens(tok):
    ids = tok.encode("The capital of France is Paris. Next")
    deltas, stop, flushed = run(tok, ids, stop=["is Par"])
    assert stop == "is Par" and "".join(deltas) == "The capital of France " and flushed == ""
    deltas, stop, _ = run(tok, ids, stop=["is Par"], include_stop_str_in_output=True)
    assert "".join(deltas) == "The capital of France is Par"


def test_held_prefix_released_when_stop_does_not_follow(tok):
    """A stop string whose prefix appears earlier: that text is held, then emitted unchanged."""
    ids = tok.encode("Paris is Paris. Paris!")
    deltas, stop, flushed = run(tok, ids, stop=["Paris!"])
    assert stop == "Paris!" and "".join(deltas) == "Paris is Paris. "
    deltas, stop, flushed = run(tok, ids, stop=["Paris?"])
    assert stop is None and "".join(deltas) + flushed == "Paris is Paris. Paris!"
    assert flushed == ""  # "!" ends the held "Paris" prefix before the end


def test_nothing_after_stop_and_earliest_stop_wins(tok):
    ids = tok.encode("one two three four")
    detok = IncrementalDetokenizer(tok, [], stop=["four", "two"])
    out = [detok.step([i]) for i in ids]
    assert [s for _, s in out if s] == ["two"]
    assert detok.output_text == "one " and detok.step(tok.encode(" more")) == ("", None) and detok.flush() == ""
    deltas, stop, _ = run(tok, ids, chunk=len(ids), stop=["three", "two three"])
    assert stop == "two three" and "".join(deltas) == "one "


def test_window_stays_small(tok):
    """Each step decodes a bounded window, not the whole output (O(1) per token)."""
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tok.encode("word " * 400)
    detok = IncrementalDetokenizer(Counting(), [], stop=["zz"])
    for i in ids:
        detok.step([i])
    assert detok.output_text + detok.flush() == "word " * 400
    assert max(calls) <= 8
