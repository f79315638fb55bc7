#!/usr/bin/env python3
"""Cross-checks the committed fixtures against independent loaders; writes nothing.

0. tiny/gptneox*.gguf read back by the `gguf` package's own reader (GGUFReader): every tensor's
   name, shape and type (F32), and its values bit for bit, against the safetensors file it was
   made from (tiny/gptneox*-hf, read with `safetensors`, the fused QKV regrouped per head as
   llama.cpp's converter does); and the architecture metadata against config.json. As a negative
   control the regrouping must matter (the raw HF QKV rows differ from the GGUF's).
   Needs only: pip install gguf numpy safetensors. `--gguf-only` runs just this step (CI does).
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


def check_gptneox_gguf(name):
    """Step 0 for tiny/<name>.gguf and tiny/<name>-hf."""
    import gguf
    from safetensors.numpy import load_file

    reader = gguf.GGUFReader(os.path.join(TINY, f"{name}.gguf"))
    hf = load_file(os.path.join(TINY, f"{name}-hf", "model.safetensors"))
    with open(os.path.join(TINY, f"{name}-hf", "config.json")) as f:
        cfg = json.load(f)
    n_head, n_embd = cfg["num_attention_heads"], cfg["hidden_size"]

    def field(key):
        return reader.fields[key].contents()

    head = n_embd // n_head
    want_meta = {
        "general.architecture": "gptneox",
        "gptneox.context_length": cfg["max_position_embeddings"],
        "gptneox.embedding_length": n_embd,
        "gptneox.block_count": cfg["num_hidden_layers"],
        "gptneox.feed_forward_length": cfg["intermediate_size"],
        "gptneox.attention.head_count": n_head,
        "gptneox.rope.dimension_count": int(cfg["rope_parameters"]["partial_rotary_factor"] * head),
        "gptneox.use_parallel_residual": cfg["use_parallel_residual"],
    }
    bad_meta = [(k, field(k) if k in reader.fields else None, v) for k, v in want_meta.items()
                if k not in reader.fields or field(k) != v]
    eps = field("gptneox.attention.layer_norm_epsilon") if "gptneox.attention.layer_norm_epsilon" in reader.fields else None
    if eps is None or abs(eps - cfg["layer_norm_eps"]) > 1e-12:
        bad_meta.append(("gptneox.attention.layer_norm_epsilon", eps, cfg["layer_norm_eps"]))
    check(not bad_meta, f"gguf reads tiny/{name}.gguf's metadata as config.json says" + (f" (key, got, want: {bad_meta})" if bad_meta else ""))

    # HF name -> (GGUF name, the array as the GGUF must hold it, in numpy's row-major order).
    names = {"gpt_neox.embed_in.weight": "token_embd.weight", "gpt_neox.final_layer_norm.weight": "output_norm.weight",
             "gpt_neox.final_layer_norm.bias": "output_norm.bias", "embed_out.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
                 "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
    want = {}
    for k, v in hf.items():
        if k in names:
            gname = names[k]
        else:
            _, _, i, *rest = k.split(".")
            gname = f"blk.{i}.{per_layer['.'.join(rest[:-1])]}.{rest[-1]}"
        if gname.endswith("attn_qkv.weight"):  # per head [q, k, v] -> [all q; all k; all v]
            v = v.reshape(n_head, 3, head, n_embd).transpose(1, 0, 2, 3).reshape(3 * n_embd, n_embd)
        if gname.endswith("attn_qkv.bias"):
            v = v.reshape(n_head, 3, head).transpose(1, 0, 2).reshape(3 * n_embd)
        want[gname] = v
    got = {t.name: t for t in reader.tensors}
    check(set(got) == set(want), f"tiny/{name}.gguf holds exactly the safetensors' {len(want)} tensors"
          + ("" if set(got) == set(want) else f" (missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))})"))
    bad = []
    for gname in sorted(set(got) & set(want)):
        t, w = got[gname], want[gname]
        data = np.asarray(t.data)
        # GGUF lists dimensions innermost first (ne0 = columns); the reader's array is row-major.
        dims = [int(d) for d in t.shape]
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or data.dtype != np.float32:
            bad.append(f"{gname}: type {t.tensor_type!r}, dtype {data.dtype}")
        elif dims != list(reversed(w.shape)) or data.shape != w.shape:
            bad.append(f"{gname}: dims {dims}, array {data.shape}, want {w.shape}")
        elif not np.array_equal(data.view(np.uint32), np.ascontiguousarray(w).view(np.uint32)):
            bad.append(f"{gname}: values differ (max |diff| {np.abs(data - w).max():.3e})")
    check(not bad, f"tiny/{name}.gguf's tensors have the safetensors' shapes, F32 type and bits" + (f": {bad}" if bad else ""))
    # Negative control: the comparison must see a wrong row order.
    qkv = "blk.0.attn_qkv.weight"
    raw = hf["gpt_neox.layers.0.attention.query_key_value.weight"]
    check(not np.array_equal(np.asarray(got[qkv].data), raw),
          f"negative control: tiny/{name}.gguf's {qkv} differs from the un-regrouped HF rows")


def main():
    for name in ["gptneox", "gptneox-seq"]:
        check_gptneox_gguf(name)
    if "--gguf-only" in sys.argv[1:]:
        return

    import torch
    from transformers import AutoModelForCausalLM

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
