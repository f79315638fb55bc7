#!/usr/bin/env python3
"""Tiny random-weight Llama, Qwen2, GPT-NeoX and Gemma 3 models with reference logits from Python
transformers.

Makes engine/tests/fixtures/tiny/:
  <name>-hf/              config.json + model.safetensors (save_pretrained)
  <name>.gguf             the same weights as GGUF (F32), written like llama.cpp's
                          convert_hf_to_gguf.py: Q/K rows permuted for `llama`, not for `qwen2`;
                          GPT-NeoX's fused QKV rows regrouped from per-head [q, k, v] to [Q; K; V];
                          Gemma 3's RMSNorm weights stored as 1 + w; a byte-level GPT-2 tokenizer:
                          256 byte tokens + 4 merges (ids 256..259)
  <name>.ref.json         {"tokens", "logits" (every position), "greedy" (16 ids)}
  llama-draft.gguf        the tiny llama with every weight perturbed (+30% noise): a draft that
                          agrees with llama.gguf often but not always (for speculative tests)
where <name> is llama, qwen2, gptneox (parallel residual, rotary over 1/4 of each head),
gptneox-seq (sequential residual, rotary over 1/2) and gemma3 (7 layers: local layers 0-4 and 6
with a sliding window of 4 < the 12 reference tokens, global layer 5; QK-norm, 4 heads / 1 KV head).
The Gemma 3 GGUF omits the local RoPE base and the layer pattern, as the real gemma-3-270m file does.
The script checks that transformers' own GGUF loader reads gemma3.gguf back to the same logits.

Needs: pip install torch transformers gguf numpy safetensors
(made with torch 2.15.0, transformers 5.23.0, gguf 0.19.0). Run: python3 scripts/make_tiny_models.py
"""
import json
import os

import gguf
import numpy as np
import torch
from transformers import (AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

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


def randomize(model, seed, norm_center=1.0):
    """Weights ~ N(0, 0.1²); norm scales around `norm_center` (0 for Gemma, whose RMSNorm multiplies
    by 1 + w), norm biases around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            center = norm_center if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(center + 0.1 * torch.randn(p.shape, generator=g))


def add_tokenizer(w, arch):
    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
    w.add_token_list([b2u[b] for b in range(256)] + ["".join(m.split()) for m in MERGES])
    w.add_token_types([1] * 260)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def state_dict_f32(model):
    return {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def write_gptneox_gguf(model, cfg, path):
    """As convert_hf_to_gguf.py's GPTNeoXModel: no rope freq base (llama.cpp's default 10000)."""
    w = gguf.GGUFWriter(path, "gptneox")
    w.add_name("tiny-gptneox")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    head = cfg.hidden_size // cfg.num_attention_heads
    w.add_rope_dimension_count(int(cfg.rope_parameters["partial_rotary_factor"] * head))
    w.add_head_count(cfg.num_attention_heads)
    w.add_parallel_residual(cfg.use_parallel_residual)
    w.add_layer_norm_eps(cfg.layer_norm_eps)
    w.add_file_type(0)
    add_tokenizer(w, "gptneox")
    names = {"gpt_neox.embed_in.weight": "token_embd.weight", "gpt_neox.final_layer_norm.weight": "output_norm.weight",
             "gpt_neox.final_layer_norm.bias": "output_norm.bias", "embed_out.weight": "output.weight",
             "lm_head.weight": "output.weight"}  # transformers 5 names embed_out lm_head in memory
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
                 "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
    n_head, n_embd = cfg.num_attention_heads, cfg.hidden_size
    for k, v in state_dict_f32(model).items():
        if k in names:
            name = names[k]
        else:
            _, _, i, *rest = k.split(".")
            name = f"blk.{i}.{per_layer['.'.join(rest[:-1])]}.{rest[-1]}"
        if name.endswith("attn_qkv.weight"):  # per head [q, k, v] -> [all q; all k; all v]
            v = v.reshape(n_head, 3, n_embd // n_head, n_embd).transpose(1, 0, 2, 3).reshape(3 * n_embd, n_embd)
        if name.endswith("attn_qkv.bias"):
            v = v.reshape(n_head, 3, n_embd // n_head).transpose(1, 0, 2).reshape(3 * n_embd)
        w.add_tensor(name, np.ascontiguousarray(v))
    finish(w)


def write_gemma3_gguf(model, cfg, path):
    """As convert_hf_to_gguf.py's Gemma3Model at the time gemma-3-270m was converted: global rope
    base and sliding window written, local base and layer pattern left to llama.cpp's defaults
    (10000, every 6th layer global); every RMSNorm weight stored as 1 + w."""
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_name("tiny-gemma3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_file_type(0)
    add_tokenizer(w, "gemma3")
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                 "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, v in state_dict_f32(model).items():
        if k == "lm_head.weight":
            continue  # tied
        if k == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif k == "model.norm.weight":
            name = "output_norm.weight"
        else:
            _, _, i, *rest = k.split(".")
            name = f"blk.{i}.{per_layer['.'.join(rest[:-1])]}.{rest[-1]}"
        if name.endswith("norm.weight"):
            v = v + np.float32(1.0)
        w.add_tensor(name, np.ascontiguousarray(v))
    finish(w)


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
    add_tokenizer(w, arch)

    sd = state_dict_f32(model)
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
    finish(w)


def reference(model, path):
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
    with open(path, "w") as f:
        json.dump(ref, f)
    return logits, greedy


def make_families():
    """GPT-NeoX (parallel and sequential residual) and Gemma 3."""
    neox = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, layer_norm_eps=1e-5, hidden_act="gelu", rotary_emb_base=10000.0,
                tie_word_embeddings=False)
    specs = {
        "gptneox": (GPTNeoXConfig(**neox, rotary_pct=0.25, use_parallel_residual=True), 3),
        "gptneox-seq": (GPTNeoXConfig(**neox, rotary_pct=0.5, use_parallel_residual=False), 4),
    }
    for name, (cfg, seed) in specs.items():
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg).eval()
        randomize(model, seed)
        model.save_pretrained(os.path.join(OUT, f"{name}-hf"), safe_serialization=True)
        write_gptneox_gguf(model, cfg, os.path.join(OUT, f"{name}.gguf"))
        logits, greedy = reference(model, os.path.join(OUT, f"{name}.ref.json"))
        print(name, "max|logit|", float(np.abs(logits).max()), "greedy", greedy)

    # Gemma 3: query_pre_attn_scalar = head_dim, because GGUF has no key for it (llama.cpp scales by
    # head_dim^-0.5, as gemma-3-270m's config does with 256).
    cfg = Gemma3TextConfig(vocab_size=260, hidden_size=48, intermediate_size=64, num_hidden_layers=7,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                           sliding_window=4, max_position_embeddings=128, rms_norm_eps=1e-6,
                           rope_theta=1000000.0, rope_local_base_freq=10000.0, hidden_activation="gelu_pytorch_tanh",
                           tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]
    torch.manual_seed(5)
    model = Gemma3ForCausalLM(cfg).eval()
    randomize(model, 5, norm_center=0.0)
    model.tie_weights()
    model.save_pretrained(os.path.join(OUT, "gemma3-hf"), safe_serialization=True)
    path = os.path.join(OUT, "gemma3.gguf")
    write_gemma3_gguf(model, cfg, path)
    logits, greedy = reference(model, os.path.join(OUT, "gemma3.ref.json"))
    print("gemma3 max|logit|", float(np.abs(logits).max()), "greedy", greedy)
    # Independent check of the GGUF layout: transformers' GGUF loader (which subtracts the 1 again)
    # must give the same logits. Its config defaults query_pre_attn_scalar to 256: pass ours.
    back = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="gemma3.gguf", dtype=torch.float32,
                                                query_pre_attn_scalar=16, attn_implementation="eager").eval()
    with torch.no_grad():
        again = back(torch.tensor([TOKENS])).logits[0].numpy()
    diff = float(np.abs(again - logits).max())
    print("gemma3.gguf read back by transformers: max|diff|", diff)
    assert diff < 1e-4, diff


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
        logits, greedy = reference(model, os.path.join(OUT, f"{arch}.ref.json"))
        print(arch, "max|logit|", float(np.abs(logits).max()), "greedy", greedy)
        if arch == "llama":
            g = torch.Generator().manual_seed(99)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
            write_gguf(model, cfg, arch, os.path.join(OUT, "llama-draft.gguf"))
    make_families()


if __name__ == "__main__":
    main()
