"""Greedy agreement of a quantized engine with the plain one on fixed chat prompts.

    .venv/bin/python scripts/quant_agreement.py [--quantization int8] [--max-tokens 48]
"""
import argparse

from engine import EngineConfig, LLMEngine, SamplingParams

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain gravity to a child.",
    "List three fruits.", "What is 12 times 7?", "Who wrote Hamlet?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--quantization", default="int8")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    results = []
    for quant in (None, args.quantization):
        engine = LLMEngine(EngineConfig(model=args.model, quantization=quant, max_model_len=2048))
        tok = engine.tokenizer
        prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
        results.append([c[0].token_ids for c in engine.generate(prompts, params)])
    base, quant = results
    for q, a, b in zip(QUESTIONS, base, quant):
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"{'same' if a == b else 'diff'}  first divergence at token {first:3d}  {q}")
    print(f"identical: {sum(a == b for a, b in zip(base, quant))}/{len(base)}")


if __name__ == "__main__":
    main()
