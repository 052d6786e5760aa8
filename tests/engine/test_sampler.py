import torch

from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def seqs_for(*params):
    out = []
    for i, p in enumerate(params):
        seq = Sequence(i, f"r{i}", 0, [1, 2, 3], p, 16)
        if p.seed is not None:
            seq.generator = torch.Generator().manual_seed(p.seed)
        out.append(seq)
    return out


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    ids, lps = Sampler(3, torch.device("cpu"))(logits, seqs_for(SamplingParams(temperature=0), SamplingParams(temperature=0)))
    assert ids == [1, 0] and lps is None


def test_seeded_rows_repeat_whatever_the_batch():
    torch.manual_seed(1)
    logits = torch.randn(1, 50)
    sampler = Sampler(50, torch.device("cpu"))
    alone = [sampler(logits.clone(), seqs_for(SamplingParams(seed=42)))[0][0] for _ in range(1)]
    batch = torch.cat([torch.randn(3, 50), logits])
    seqs = seqs_for(SamplingParams(), SamplingParams(temperature=0), SamplingParams(), SamplingParams(seed=42))
    assert sampler(batch, seqs)[0][3] == alone[0]


def test_sampling_follows_the_distribution_and_top_k_top_p_cut():
    sampler = Sampler(4, torch.device("cpu"))
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    ids, _ = sampler(logits.clone(), seqs_for(*[SamplingParams(temperature=1.0)] * 4000))
    freq = torch.bincount(torch.tensor(ids), minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)
    ids, _ = sampler(logits[:500].clone(), seqs_for(*[SamplingParams(top_k=2)] * 500))
    assert set(ids) == {0, 1}
    ids, _ = sampler(logits[:500].clone(), seqs_for(*[SamplingParams(top_p=0.6)] * 500))
    assert set(ids) == {0, 1}  # 0.5 alone is under 0.6, so the 0.3 token stays in
    ids, _ = sampler(logits[:500].clone(), seqs_for(*[SamplingParams(min_p=0.5)] * 500))
    assert set(ids) == {0, 1}  # 0.15 < 0.5 * 0.5


def test_logit_bias_and_logprobs():
    sampler = Sampler(3, torch.device("cpu"))
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    ids, lps = sampler(logits.clone(), seqs_for(SamplingParams(temperature=0, logit_bias={2: 100.0}, logprobs=2)))
    assert ids == [2]
    assert lps[0].token_id == 2 and abs(lps[0].logprob) < 1e-3
    assert list(lps[0].top_logprobs) == [2, 0]


def test_penalties_push_repeated_tokens_down():
    sampler = Sampler(3, torch.device("cpu"))
    seq = seqs_for(SamplingParams(temperature=0, frequency_penalty=2.0))[0]
    seq.token_ids += [0, 0]
    ids, _ = sampler(torch.tensor([[3.0, 0.0, 0.0]]), [seq])
    assert ids != [0]
