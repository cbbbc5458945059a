#!/usr/bin/env python3
"""Golden logits from Hugging Face transformers for mpserve's reference tests.

Runs on the GPU machine (torch + transformers installed there). For each model directory made by
`mpserve make-model`, it tokenizes fixed prompts with the model's own tokenizer.json (HF fast
tokenizer), greedily generates N tokens with the model computed in float32 (weights are the bf16
values upcast, so this is the exact function the f32 CPU backend computes), then runs one full
forward pass over prompt + generated tokens and records, for the last prompt position and every
decode position: the top-20 logits, the logits at a fixed set of vocabulary indices, and the
log-sum-exp. It also records the same sub-logits from a bf16 forward pass, which shows what
"bf16 tolerance" means for this model (the CUDA backend computes in bf16), and a checksum of every
tensor of model.safetensors (weights_checksum), which the test compares with the model it makes:
a golden file recorded on other weights fails with that message rather than with wrong logits.

usage: golden_hf.py --model DIR --name NAME --out FILE [--new-tokens 32]
"""
import argparse
import json
import os
import platform

import torch
import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. In the beginning",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Москва — столица России. 東京は日本の首都です。",
]


def weights_checksum(model_dir):
    """{tensor name: sum_i x_i * (1 + i % 1009)} over the flattened bf16 values, in float64. The
    weights make it order-sensitive (a permutation of rows changes it); tests/golden computes the
    same in C++ and compares with a relative tolerance."""
    out = {}
    with safe_open(os.path.join(model_dir, "model.safetensors"), framework="pt") as f:
        for name in sorted(f.keys()):
            x = f.get_tensor(name).flatten().to(torch.float64)
            w = torch.arange(x.numel(), dtype=torch.int64) % 1009 + 1
            out[name] = (x * w.to(torch.float64)).sum().item()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--num-indices", type=int, default=128)
    args = ap.parse_args()

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    m32 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").to(dev)
    m16 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="eager").to(dev)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    vocab = m32.config.vocab_size
    g = torch.Generator().manual_seed(1234)
    indices = sorted(torch.randperm(vocab, generator=g)[: args.num_indices].tolist())

    cases = []
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids], device=dev)
        with torch.no_grad():
            gen = m32.generate(x, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens,
                               pad_token_id=0)
            full = gen[0].tolist()
            generated = full[len(ids):]
            lg32 = m32(torch.tensor([full], device=dev)).logits[0].float()
            lg16 = m16(torch.tensor([full], device=dev)).logits[0].float()
        positions = []
        for p in range(len(ids) - 1, len(full)):
            row = lg32[p]
            top = torch.topk(row, 20)
            positions.append({
                "pos": p,
                "top_ids": top.indices.tolist(),
                "top_logits": [round(v, 6) for v in top.values.tolist()],
                "sub_logits": [round(row[i].item(), 6) for i in indices],
                "bf16_sub_logits": [round(lg16[p][i].item(), 4) for i in indices],
                "logsumexp": round(torch.logsumexp(row, 0).item(), 6),
            })
        cases.append({"prompt": prompt, "prompt_ids": ids, "generated_ids": generated, "positions": positions})

    out = {
        "name": args.name,
        "architecture": m32.config.architectures[0] if m32.config.architectures else type(m32).__name__,
        "vocab_size": vocab,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor(),
        "compute": "float32 reference (bf16 weights upcast); bf16_sub_logits from a bfloat16 forward",
        "weights_checksum": weights_checksum(args.model),
        "vocab_indices": indices,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"golden: {args.name} cases={len(cases)} positions={sum(len(c['positions']) for c in cases)} -> {args.out}")


if __name__ == "__main__":
    main()
