#!/usr/bin/env python3
"""Tokenizer references from Python transformers, loading each tokenizer straight from its GGUF.

Makes engine/tests/fixtures/tokenizer/<name>.json for smollm2, qwen2.5-coder-0.5b and gemma3-270m:
  {"model", "file", "transformers", "tokenizer_class",
   "gguf": {the GGUF's tokenizer.ggml.* scalar keys (model, pre, bos/eos ids, add_bos_token, ...)},
   "bos_id", "eos_id", "vocab_size", "add_bos_token" (what transformers does with add_special_tokens=True),
   "cases": [{"text", "ids" (encode(text, add_special_tokens=False)),
              "ids_with_special" (add_special_tokens=True), "decoded" (decode(ids))}],
   "chat_template": str | null,
   "chat": {"messages", "text" (apply_chat_template(add_generation_prompt=True, tokenize=False)),
            "ids" (encode(text, add_special_tokens=False))} | {"messages", "error"},
   "same_vocab_as": {other GGUF file: true/false}   (qwen only: 1.5B token list/merges/types/ids)}
A model transformers cannot load gets {"model", "file", "error"} instead.

Needs: pip install torch transformers gguf numpy sentencepiece protobuf (made with transformers
5.23.0, tokenizers 0.23.3, gguf 0.19.0) and the models in $MODELS (default /work/models).
Run: python3 scripts/make_tokenizer_fixtures.py
"""
import json
import os

import gguf
import numpy as np
import transformers
from transformers import AutoTokenizer

MODELS = os.environ.get("MODELS", "/work/models")
OUT = os.path.join(os.path.dirname(__file__), "..", "engine", "tests", "fixtures", "tokenizer")

SPECS = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", []),
    "qwen2.5-coder-0.5b": ("qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", ["qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"]),
    "gemma3-270m": ("gemma-3-270m-q4_k_m.gguf", []),
}

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "multiple    spaces   between  words",
    "line one\nline two\n\n\nafter blank lines\n",
    "tab\tseparated\tvalues\r\nand CRLF",
    "12345 678",
    "3.14159, 1,000,000 and 2024-03-01T12:00:00Z",
    "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n\n\nif __name__ == \"__main__\":\n\tprint(add(1, 2))\n",
    "Hello, world! (Really?) Yes... #1 @user $5 & 50% off; [a]{b}<c>",
    "don't I'll we're they've it's",
    "café naïve 日本語 🙂",
    "emoji: 🎉🚀👩‍👩‍👧 👍🏽",
    "<|im_start|>user\nhi<|im_end|>",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    # The engine's own round-trip samples (engine/tests/tokenizer.rs).
    "Hello world! 123",
    "The capital of France is",
    "  multiple   spaces\tand\ttabs\n\nnew paragraphs\r\n",
    "Café déjà vu — naïve façade.",
    "日本語のテキストと絵文字 🎉🚀👩‍👩‍👧 mixed with English.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Numbers: 3.14159, 1,000,000 and 2024-03-01T12:00:00Z; emails a.b@c.de",
    "Ünïcödé: Ελληνικά, русский, العربية, हिन्दी, 한국어",
    "x",
    "",
]

MESSAGES = [{"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Write hello world in Python."}]

BIG_FIELDS = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
              "tokenizer.ggml.token_type", "tokenizer.chat_template"}


def gguf_tokenizer_fields(path):
    r = gguf.GGUFReader(path)
    scalars = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.") and k not in BIG_FIELDS}
    big = {k: r.fields[k].contents() for k in BIG_FIELDS if k in r.fields}
    return scalars, big


def jsonable(v):
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def make(name, file, compare):
    path = os.path.join(MODELS, file)
    scalars, big = gguf_tokenizer_fields(path)
    out = {"model": name, "file": file, "transformers": transformers.__version__}
    try:
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    except Exception as e:  # recorded, not fatal
        out["error"] = f"transformers could not load the tokenizer: {type(e).__name__}: {e}"
        return out, None
    out["tokenizer_class"] = type(tok).__name__
    out["gguf"] = {k: jsonable(v) for k, v in sorted(scalars.items())}
    out["bos_id"] = tok.bos_token_id
    out["eos_id"] = tok.eos_token_id
    out["vocab_size"] = len(tok)
    out["add_bos_token"] = bool(getattr(tok, "add_bos_token", False))
    cases = []
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids": ids, "ids_with_special": tok.encode(text, add_special_tokens=True),
                      "decoded": tok.decode(ids)})
    out["cases"] = cases
    out["chat_template"] = tok.chat_template
    if "tokenizer.chat_template" not in big:
        out["chat"] = {"messages": MESSAGES, "error": "the GGUF has no tokenizer.chat_template"}
    else:
        try:
            text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
            out["chat"] = {"messages": MESSAGES, "text": text, "ids": tok.encode(text, add_special_tokens=False)}
        except Exception as e:
            out["chat"] = {"messages": MESSAGES, "error": f"{type(e).__name__}: {e}"}
    if compare:
        out["same_vocab_as"] = {}
        for other in compare:
            o_scalars, o_big = gguf_tokenizer_fields(os.path.join(MODELS, other))
            same = all(list(big.get(k, [])) == list(o_big.get(k, [])) for k in
                       ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"))
            same = same and {k: jsonable(v) for k, v in o_scalars.items()} == out["gguf"]
            o_tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=other)
            same_ids = all(o_tok.encode(c["text"], add_special_tokens=False) == c["ids"] for c in cases)
            same_tmpl = o_tok.chat_template == tok.chat_template
            print(f"  {other}: same tokens/merges/types/keys={same} same ids={same_ids} same template={same_tmpl}")
            out["same_vocab_as"][other] = bool(same and same_ids)
            if not same_tmpl:
                out.setdefault("notes", []).append(f"{other} has a different chat template (in 0.5B vs 1.5B only the tools branch differs: {{ vs {{{{ around the tool-call JSON example)")
    return out, tok


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (file, compare) in SPECS.items():
        out, tok = make(name, file, compare)
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
            f.write("\n")
        if "error" in out:
            print(name, "ERROR", out["error"])
        else:
            print(name, out["tokenizer_class"], "bos", out["bos_id"], "eos", out["eos_id"], "vocab", out["vocab_size"],
                  "add_bos", out["add_bos_token"], "pre", out["gguf"].get("tokenizer.ggml.pre"),
                  "chat", "error" not in out["chat"])


if __name__ == "__main__":
    main()
