"""Greedy agreement of a quantized engine with the plain one on fixed chat prompts.

    .venv/bin/python scripts/quant_agreement.py [--quantization int8] [--max-tokens 48]
    .venv/bin/python scripts/quant_agreement.py --default-vs-float32

--default-vs-float32: the default path (a GGUF file's own blocks, activations quantized per
block) against ``--dtype float32`` (the same blocks dequantized: the reference).
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
    ap.add_argument("--default-vs-float32", action="store_true")
    args = ap.parse_args()
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    results = []
    configs = ([dict(dtype="float32"), {}] if args.default_vs_float32 else
               [dict(quantization=None), dict(quantization=args.quantization)])
    for config in configs:
        engine = LLMEngine(EngineConfig(model=args.model, max_model_len=2048, **config))
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
