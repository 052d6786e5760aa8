"""The engine's grammar hook (engine/guided.py) on a tiny random model, with a hand-made guide."""
import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.guided import Guide, GuidedMasker, bitmask_words


class ChoiceGuide:
    """Allows exactly one of some token sequences, then terminates."""

    def __init__(self, choices: list[list[int]], prefix: tuple[int, ...] = ()) -> None:
        self.choices = choices
        self.prefix = prefix
        self.accepted: list[int] = []  # what this copy saw (clones must not share it)

    def _allowed(self) -> set[int]:
        n = len(self.prefix)
        return {c[n] for c in self.choices if tuple(c[:n]) == self.prefix and len(c) > n}

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        words = [0] * bitmask.shape[1]
        for t in self._allowed():
            words[t // 32] |= 1 << (t % 32)
        bitmask[row] = torch.tensor([w - (1 << 32) if w >= 1 << 31 else w for w in words], dtype=torch.int32)

    def accept(self, token_id: int) -> bool:
        if token_id not in self._allowed():
            return False
        self.prefix += (token_id,)
        self.accepted.append(token_id)
        return True

    def is_terminated(self) -> bool:
        return not self._allowed()

    def clone(self) -> "ChoiceGuide":
        return ChoiceGuide(self.choices, self.prefix)


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return LLMEngine(EngineConfig(model=tiny_llama, num_threads=1, block_size=4))


def test_guide_is_the_protocol():
    assert isinstance(ChoiceGuide([[5]]), Guide)


def test_masker_allows_exactly_the_set_bits():
    vocab = 100
    masker = GuidedMasker(vocab, torch.device("cpu"))
    logits = torch.zeros(3, vocab)
    allowed = [0, 31, 32, 63, 99]
    masker.apply(logits, [None, ChoiceGuide([[t] for t in allowed]), None])
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == allowed
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[2]).all()  # unguided rows untouched
    assert bitmask_words(vocab) == 4


class BatchChoiceGuide(ChoiceGuide):
    calls: list[list[int]] = []

    @classmethod
    def fill_bitmasks(cls, pairs, bitmask):
        cls.calls.append([row for _, row in pairs])
        for guide, row in pairs:
            guide.fill_bitmask(bitmask, row)


def test_a_guide_class_may_fill_many_rows_in_one_call():
    masker = GuidedMasker(64, torch.device("cpu"))
    logits = torch.zeros(4, 64)
    BatchChoiceGuide.calls.clear()
    masker.apply(logits, [BatchChoiceGuide([[1]]), None, BatchChoiceGuide([[40]]), ChoiceGuide([[63]])])
    assert BatchChoiceGuide.calls == [[0, 1]]  # the two rows of that class, at their bitmask rows
    assert [torch.isfinite(row).nonzero().flatten().tolist() for row in logits] == [[1], list(range(64)), [40], [63]]


def test_greedy_follows_the_grammar_and_stops_when_it_terminates(engine):
    target = [17, 200, 33, 404, 5]
    params = SamplingParams(temperature=0, max_tokens=20, guide=ChoiceGuide([target]))
    out = engine.generate([[10, 11, 12]], params)[0][0]
    assert out.token_ids == target
    assert out.finish_reason == "stop"
    assert params.guide.prefix == ()  # the request's guide is a template: choices run clones


def test_sampled_choices_each_get_their_own_clone(engine):
    choices = [[40, 41, 42], [50, 51, 52], [60, 61, 62, 63]]
    params = SamplingParams(n=6, temperature=100.0, seed=3, max_tokens=10, guide=ChoiceGuide(choices))  # near uniform
    outs = engine.generate([[7, 8, 9, 10, 11]], params)[0]
    assert len(outs) == 6
    for o in outs:
        assert o.token_ids in choices and o.finish_reason == "stop"
    assert len({tuple(o.token_ids) for o in outs}) > 1  # independent: not one shared state


def test_a_guided_row_does_not_change_its_unguided_neighbours(engine):
    plain = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompt = [30, 31, 32, 33]
    solo = engine.generate([prompt], plain)[0][0].token_ids
    engine.add_request("guided", [1, 2, 3], SamplingParams(temperature=0, max_tokens=8, guide=ChoiceGuide([[9] * 8])))
    engine.add_request("plain", prompt, plain)
    got: dict[str, list[int]] = {"guided": [], "plain": []}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got[out.request_id] += out.outputs[0].token_ids
    assert got["plain"] == solo
    assert got["guided"] == [9] * 8


def test_eos_is_sampled_only_where_the_grammar_allows_it(engine):
    eos = sorted(engine.eos_token_ids)[0]
    params = SamplingParams(temperature=0, max_tokens=10, guide=ChoiceGuide([[70, 71, eos]]))
    out = engine.generate([[3, 4, 5]], params)[0][0]
    assert out.token_ids == [70, 71, eos] and out.finish_reason == "stop"
