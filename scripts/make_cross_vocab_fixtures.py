#!/usr/bin/env python3
"""Two tiny random-weight models with *different* tokenizers, for cross-tokenizer speculation.

Makes engine/tests/fixtures/cross/ (the study's pairing in miniature: a SentencePiece draft, like
TinyLlama's, drafting for a byte-level BPE target, like Pythia's GPT-NeoX tokenizer):

  spm-draft.gguf   llama arch, tokenizer.ggml.model = "llama" (SentencePiece): <unk> <s> </s>,
                   byte-fallback tokens <0x00>..<0xFF>, word pieces with scores, a control token
                   <|im_end|>; add_space_prefix = true, add_bos = true
  bpe-target.gguf  llama arch, tokenizer.ggml.model = "gpt2" (byte-level BPE, pre "gpt-2"): 256
                   byte tokens, merges that split words differently from the draft's pieces
                   (e.g. "hello" = "hel" + "lo" for one, "he" + "llo" for the other; "é" merged),
                   control tokens <|endoftext|> and <|im_end|>
  bpe-wide.gguf    bpe-target's vocabulary plus two unused padding ids at the end (a *superset*:
                   every bpe-target id means the same here), with bpe-target's weights slightly
                   perturbed, so bpe-target can draft for it with ids mapped directly

The weights are random (no reference logits: the architecture is checked by make_tiny_models.py);
what matters here is that the two vocabularies disagree on ids, segmentation and special tokens.

Needs: pip install gguf numpy (made with gguf 0.19.0, numpy 2.4.6).
Run: python3 scripts/make_cross_vocab_fixtures.py
"""
import os

import gguf
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "engine", "tests", "fixtures", "cross")

# SentencePiece pieces ("▁" = space), scored so that longer pieces merge first.
SPM_PIECES = [
    "▁", "▁t", "▁th", "▁the", "▁a", "▁an", "▁and", "▁c", "▁ca", "▁cat", "▁s", "▁sa", "▁sat",
    "▁o", "▁on", "▁he", "▁hel", "▁hello", "llo", "ll", "▁w", "▁wor", "▁world", "or", "ld",
    "▁rel", "at", "iv", "ity", "ativ", "ativity", "▁theory", "eory", "▁of", "of",
    "a", "b", "c", "d", "e", "h", "i", "l", "n", "o", "r", "s", "t", "w", "y", "v", "f", ".", ",",
    "ab", "▁ab", "ba", "é", "▁caf", "▁café", "af",
]

# Byte-level BPE merges (GPT-2 spelling: "Ġ" = space, "Ã" "©" = the two bytes of "é").
BPE_MERGES = [
    "Ġ t", "h e", "Ġt he", "Ġ a", "a n", "Ġa n", "Ġan d", "Ġ c", "a t", "Ġc at", "Ġ s", "Ġs at",
    "Ġ o", "Ġo n", "Ġ h", "Ġh e", "l l", "ll o", "Ġhe llo", "Ġ w", "o r", "Ġw or", "Ġwor ld",
    "l d", "r e", "Ġ re", "Ġre l", "i t", "it y", "a b", "Ã ©", "Ġc a", "Ġca f", "Ġcaf Ã©",
    "e o", "eo r", "eor y", "Ġthe ory", "o f", "Ġ of",
]


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


def spm_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES + ["<|im_end|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [3]
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [float(len(p)) - i * 1e-3 for i, p in enumerate(SPM_PIECES)] + [0.0]
    return tokens, types, scores


def bpe_vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    for m in BPE_MERGES:
        merged = "".join(m.split(" "))
        assert merged not in tokens, merged
        tokens.append(merged)
    tokens += ["<|endoftext|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return tokens, types


D, FF, LAYERS, HEADS, KV = 32, 64, 2, 4, 2


def random_weights(vocab_size, seed):
    rng = np.random.default_rng(seed)
    d, ff, heads, kv = D, FF, HEADS, KV
    hd = d // heads

    def t(*shape, scale=0.3):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w = {"token_embd.weight": t(vocab_size, d, scale=1.0), "output_norm.weight": norm(), "output.weight": t(vocab_size, d, scale=0.5)}
    for i in range(LAYERS):
        w[f"blk.{i}.attn_norm.weight"] = norm()
        w[f"blk.{i}.ffn_norm.weight"] = norm()
        w[f"blk.{i}.attn_q.weight"] = t(heads * hd, d)
        w[f"blk.{i}.attn_k.weight"] = t(kv * hd, d)
        w[f"blk.{i}.attn_v.weight"] = t(kv * hd, d)
        w[f"blk.{i}.attn_output.weight"] = t(d, heads * hd)
        w[f"blk.{i}.ffn_gate.weight"] = t(ff, d)
        w[f"blk.{i}.ffn_up.weight"] = t(ff, d)
        w[f"blk.{i}.ffn_down.weight"] = t(d, ff)
    return w


def write_model(path, name, weights, tokenizer):
    vocab_size = weights["token_embd.weight"].shape[0]
    d, ff, layers, heads, kv = D, FF, LAYERS, HEADS, KV
    hd = d // heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(vocab_size)
    w.add_file_type(0)
    tokenizer(w)

    for tensor_name, value in weights.items():
        w.add_tensor(tensor_name, np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    spm_tokens, spm_types, spm_scores = spm_vocab()

    def spm(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(spm_tokens)
        w.add_token_types(spm_types)
        w.add_token_scores(spm_scores)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)

    write_model(os.path.join(OUT, "spm-draft.gguf"), "tiny-spm-draft", random_weights(len(spm_tokens), 7), spm)

    bpe_tokens, bpe_types = bpe_vocab()

    def bpe(tokens, types):
        def add(w):
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("gpt-2")
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_merges(BPE_MERGES)
            w.add_bos_token_id(len(bpe_tokens) - 2)
            w.add_eos_token_id(len(bpe_tokens) - 2)
            w.add_add_bos_token(False)
        return add

    target = random_weights(len(bpe_tokens), 8)
    write_model(os.path.join(OUT, "bpe-target.gguf"), "tiny-bpe-target", target, bpe(bpe_tokens, bpe_types))

    # The superset: two unused ids appended (type 5), weights = bpe-target's + 2% noise, the
    # new rows random.
    rng = np.random.default_rng(9)
    wide = {}
    for tensor_name, value in target.items():
        v = value + 0.02 * np.abs(value).mean() * rng.standard_normal(value.shape).astype(np.float32)
        if tensor_name in ("token_embd.weight", "output.weight"):
            v = np.concatenate([v, 0.5 * rng.standard_normal((2, v.shape[1])).astype(np.float32)])
        wide[tensor_name] = v.astype(np.float32)
    write_model(os.path.join(OUT, "bpe-wide.gguf"), "tiny-bpe-wide", wide, bpe(bpe_tokens + ["[PAD0]", "[PAD1]"], bpe_types + [5, 5]))
    print(f"spm-draft: {len(spm_tokens)} tokens, bpe-target: {len(bpe_tokens)}, bpe-wide: {len(bpe_tokens) + 2} -> {OUT}")


if __name__ == "__main__":
    main()
