#!/usr/bin/env python3
"""Greedy references for the real GGUF models, from Python transformers (which dequantizes the GGUF
to float32): 32 greedy tokens per prompt and the top-2 logit margin at every step.

Makes engine/tests/fixtures/real/<short-name>.json: {"model", "file", "cases": [{"prompt", "chat",
"prompt_ids", "greedy_ids", "top2_margin", "first_logits_top"}]}. Prompt ids are the text encoded
without special tokens, with BOS prepended to plain prompts where the GGUF says add_bos_token
(gemma3-270m only); chat prompts are rendered with the GGUF's chat template first. gemma3-270m's
last prompt is ~900 tokens long, so its local layers' 512-position sliding window is in effect.

Needs: pip install torch transformers gguf numpy accelerate (made with torch 2.15.0, transformers
5.23.0, gguf 0.19.0, accelerate 1.15.0) and the models in $MODELS (default /work/models;
../shared/tools/fetch-models.sh; the engine's cache ~/.cache/specdec/models holds the same files).
Run: python3 scripts/make_real_references.py [short-name ...]
"""
import json
import os
import sys

import gguf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = os.environ.get("MODELS", "/work/models")
OUT = os.path.join(os.path.dirname(__file__), "..", "engine", "tests", "fixtures", "real")
STEPS = 32

CROPS = ["wheat", "barley", "potatoes", "carrots", "onions", "beans", "cabbage"]
# ~900 tokens, longer than gemma3-270m's 512-position sliding window.
LONG = "The farmer's diary.\n" + "".join(f"Day {d}: the farmer planted {CROPS[d % 7]} in field {d % 5 + 1}.\n" for d in range(1, 61))
CODE_CHAT = ["Write a Python function that checks whether a number is prime.",
             "Write a JavaScript function that reverses a string."]
SPECS = {
    "smollm2-135m": ("SmolLM2-135M-Instruct.Q4_1.gguf",
                     [("The capital of France is", False), ("def fibonacci(n):", False),
                      ("Once upon a time, in a small village,", False), ("What is the capital of France?", True)]),
    "qwen2.5-coder-0.5b": ("qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
                           [("def quicksort(arr):", False), ("# Check whether a string is a palindrome\n", False)]
                           + [(p, True) for p in CODE_CHAT]),
    "qwen2.5-coder-1.5b": ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                           [("def quicksort(arr):", False), ("# Check whether a string is a palindrome\n", False)]
                           + [(p, True) for p in CODE_CHAT]),
    "gemma3-270m": ("gemma-3-270m-q4_k_m.gguf",
                    [("The capital of France is", False), ("Once upon a time, in a small village,", False),
                     ("def fibonacci(n):", False), (LONG, False)]),
}


def adds_bos(path):
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def main(names):
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    for name in names:
        file, prompts = SPECS[name]
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=file, dtype=torch.float32).eval()
        bos = [tok.bos_token_id] if adds_bos(os.path.join(MODELS, file)) else []
        cases = []
        for text, chat in prompts:
            if chat:
                rendered = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
            else:
                rendered = text
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            if not chat:
                ids = bos + ids
            seq = list(ids)
            greedy, margins, first_top = [], [], None
            past = None
            inp = torch.tensor([seq])
            with torch.no_grad():
                for step in range(STEPS):
                    out = model(inp, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    logits = out.logits[0, -1].float()
                    top = torch.topk(logits, 20)
                    if first_top is None:
                        first_top = [[int(i), float(v)] for v, i in zip(top.values, top.indices)]
                    nxt = int(torch.argmax(logits))  # first maximum: ties go to the lowest id
                    margins.append(float(top.values[0] - top.values[1]))
                    greedy.append(nxt)
                    inp = torch.tensor([[nxt]])
            cases.append({"prompt": text, "chat": chat, "rendered": rendered, "prompt_ids": ids,
                          "greedy_ids": greedy, "top2_margin": margins, "first_logits_top": first_top})
            print(name, repr(text), "->", repr(tok.decode(greedy)), "min margin %.3f" % min(margins), flush=True)
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump({"model": name, "file": file, "transformers": __import__("transformers").__version__,
                       "cases": cases}, f, indent=1)
        del model


if __name__ == "__main__":
    main(sys.argv[1:] or list(SPECS))
