#!/usr/bin/env python3
"""Cross-checks the committed fixtures against independent loaders; writes nothing.

1. tiny/*.gguf loaded by transformers' GGUF loader: logits must equal tiny/*.ref.json (max |diff| <= 1e-4).
2. tiny/*.gguf run by llama.cpp (llama-cpp-python, f32 KV cache): logits within 1e-4 of the reference.
   This is the check that the llama Q/K permutation matches what llama.cpp expects; as a negative
   control, a llama GGUF written *without* the permutation must disagree.
3. tokenizer/*.json and real/*.json prompt ids: llama.cpp's own GGUF tokenizer
   (tokenize(text, add_bos=False, special=True)) must give the ids transformers recorded.
Steps 2-3 are skipped when llama_cpp is not installed; step 3 also when the models are absent.

Needs: pip install torch transformers gguf numpy llama-cpp-python (checked with torch 2.15.0,
transformers 5.23.0, gguf 0.19.0, llama-cpp-python 0.3.36, which compiles llama.cpp from source:
~5 min on 2 cores) and the models in $MODELS (default /work/models).
Run: python3 scripts/check_fixtures.py   (exit status 1 on any failure)
"""
import glob
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "engine", "tests", "fixtures")
TINY = os.path.join(FIX, "tiny")
MODELS = os.environ.get("MODELS", "/work/models")
TOL = 1e-4
failures = []


def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok:
        failures.append(msg)


def ref(name):
    with open(os.path.join(TINY, f"{name}.ref.json")) as f:
        r = json.load(f)
    return r, np.array(r["logits"], dtype=np.float32)


def llama_cpp_logits(llama_cpp, path, tokens):
    # type_k/type_v 0 = GGML_TYPE_F32: llama.cpp's default f16 KV cache costs ~2e-3 here.
    m = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0)
    m.eval(tokens)
    return np.array(m.scores[:len(tokens)], dtype=np.float32)


def main():
    for name in ["llama", "qwen2"]:
        r, want = ref(name)
        m = AutoModelForCausalLM.from_pretrained(TINY, gguf_file=f"{name}.gguf", dtype=torch.float32,
                                                 attn_implementation="eager").eval()
        with torch.no_grad():
            got = m(torch.tensor([r["tokens"]])).logits[0].numpy()
        check(np.abs(got - want).max() <= TOL, f"transformers loads tiny/{name}.gguf: max|diff| {np.abs(got - want).max():.2e}")

    try:
        import llama_cpp
    except ImportError:
        print("skip: llama_cpp not installed (pip install llama-cpp-python)")
        return
    for name in ["llama", "qwen2"]:
        r, want = ref(name)
        got = llama_cpp_logits(llama_cpp, os.path.join(TINY, f"{name}.gguf"), r["tokens"])
        d = np.abs(got - want).max()
        check(d <= TOL, f"llama.cpp runs tiny/{name}.gguf: max|diff| {d:.2e}")

    # Negative control: the same llama weights without the Q/K permutation.
    spec = importlib.util.spec_from_file_location("make_tiny_models", os.path.join(HERE, "make_tiny_models.py"))
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    mt.permute = lambda w, n_head: w
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(TINY, "llama-hf"), dtype=torch.float32)
    r, want = ref("llama")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "unpermuted.gguf")
        mt.write_gguf(hf, hf.config, "llama", path)
        d = np.abs(llama_cpp_logits(llama_cpp, path, r["tokens"]) - want).max()
    check(d > 0.1, f"negative control: unpermuted llama GGUF disagrees with llama.cpp (max|diff| {d:.2f})")

    vocabs = {}

    def vocab(file):
        if file not in vocabs:
            vocabs[file] = llama_cpp.Llama(model_path=os.path.join(MODELS, file), vocab_only=True, verbose=False)
        return vocabs[file]

    for path in sorted(glob.glob(os.path.join(FIX, "tokenizer", "*.json")) + glob.glob(os.path.join(FIX, "real", "*.json"))):
        with open(path) as f:
            j = json.load(f)
        label = os.path.relpath(path, FIX)
        if "file" not in j or not os.path.exists(os.path.join(MODELS, j["file"])):
            print(f"skip {label}: model not found")
            continue
        if "error" in j:
            print(f"skip {label}: {j['error']}")
            continue
        v = vocab(j["file"])
        if "cases" in j and "rendered" in (j["cases"][0] if j["cases"] else {}):
            items = [(c["rendered"], c["prompt_ids"]) for c in j["cases"]]
        else:
            items = [(c["text"], c["ids"]) for c in j.get("cases", [])]
            if "ids" in j.get("chat", {}):
                items.append((j["chat"]["text"], j["chat"]["ids"]))
        bad = [t for t, ids in items if v.tokenize(t.encode(), add_bos=False, special=True) != ids]
        check(not bad, f"llama.cpp tokenizer agrees on {label}: {len(items) - len(bad)}/{len(items)}"
              + (f" (differs on {bad!r})" if bad else ""))


if __name__ == "__main__":
    main()
    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)
