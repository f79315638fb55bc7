#!/usr/bin/env python3
"""Tiny random-weight Llama and Qwen2 models with reference logits from Python transformers.

Makes engine/tests/fixtures/tiny/:
  llama-hf/, qwen2-hf/    config.json + model.safetensors (save_pretrained)
  llama.gguf, qwen2.gguf  the same weights as GGUF (F32), written like llama.cpp's
                          convert_hf_to_gguf.py: Q/K rows permuted for `llama`, not for `qwen2`;
                          a byte-level GPT-2 tokenizer: 256 byte tokens + 4 merges (ids 256..259)
  llama.ref.json, qwen2.ref.json  {"tokens", "logits" (every position), "greedy" (16 ids)}
  llama-draft.gguf        the tiny llama with every weight perturbed (+30% noise): a draft that
                          agrees with llama.gguf often but not always (for speculative tests)

Needs: pip install torch transformers gguf numpy safetensors
(made with torch 2.15.0, transformers 5.23.0, gguf 0.19.0). Run: python3 scripts/make_tiny_models.py
"""
import json
import os

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "engine", "tests", "fixtures", "tiny")
MERGES = ["Ġ t", "h e", "i n", "Ġ a"]
TOKENS = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]  # "Hello, world"


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def write_gguf(model, cfg, arch, path):
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    if arch == "llama":
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
    w.add_token_list([b2u[b] for b in range(256)] + ["".join(m.split()) for m in MERGES])
    w.add_token_types([1] * 260)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for k, v in sd.items():
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if k in names:
            name = names[k]
        else:
            _, _, i, *rest = k.split(".")
            base, kind = ".".join(rest[:-1]), rest[-1]
            name = f"blk.{i}.{per_layer[base]}.{kind}"
        if arch == "llama" and name.endswith("attn_q.weight"):
            v = permute(v, cfg.num_attention_heads)
        if arch == "llama" and name.endswith("attn_k.weight"):
            v = permute(v, cfg.num_key_value_heads)
        w.add_tensor(name, np.ascontiguousarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    common = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    specs = {
        "llama": (LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False), LlamaForCausalLM, 1),
        "qwen2": (Qwen2Config(**common, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True), Qwen2ForCausalLM, 2),
    }
    for arch, (cfg, cls, seed) in specs.items():
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = cls(cfg).eval()
        randomize(model, seed)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(os.path.join(OUT, f"{arch}-hf"), safe_serialization=True)
        write_gguf(model, cfg, arch, os.path.join(OUT, f"{arch}.gguf"))
        ids = torch.tensor([TOKENS])
        with torch.no_grad():
            logits = model(ids).logits[0].float().numpy()
            out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        greedy = out[0, len(TOKENS):].tolist()
        ref = {
            "tokens": TOKENS,
            "logits": [[float(np.float32(x)) for x in row] for row in logits],
            "greedy": greedy,
            "max_abs_logit": float(np.abs(logits).max()),
        }
        with open(os.path.join(OUT, f"{arch}.ref.json"), "w") as f:
            json.dump(ref, f)
        print(arch, "max|logit|", ref["max_abs_logit"], "greedy", greedy)
        if arch == "llama":
            g = torch.Generator().manual_seed(99)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
            write_gguf(model, cfg, arch, os.path.join(OUT, "llama-draft.gguf"))


if __name__ == "__main__":
    main()
