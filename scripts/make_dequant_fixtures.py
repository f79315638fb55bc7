#!/usr/bin/env python3
"""Dequantization references from the Python `gguf` package for every GGML type the engine reads.

Makes engine/tests/fixtures/dequant/<TYPE>.bin (raw block bytes as stored in GGUF) and <TYPE>.json
({"type", "ggml_type_id", "source", "n_values", "values": gguf.quants.dequantize(...)}).
Blocks come from real model tensors where one of the models in $MODELS (default /work/models, as
made by ../shared/tools/fetch-models.sh) has the type; otherwise they are built synthetically:
random quantized payload bytes with sane f16 scales, which exercises every bit of the layout.

Needs: pip install gguf numpy (made with gguf 0.19.0). Run: python3 scripts/make_dequant_fixtures.py
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

MODELS = os.environ.get("MODELS", "/work/models")
OUT = os.path.join(os.path.dirname(__file__), "..", "engine", "tests", "fixtures", "dequant")
FILES = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
         "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the f16 scale fields in each block, which must be finite in synthetic data.
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def n_values(t):
    block = GGML_QUANT_SIZES[t][0]
    return 256 if block == 1 else (512 if block == 32 else 1024)


def real_block_bytes(t):
    for f in FILES:
        path = os.path.join(MODELS, f)
        if not os.path.exists(path):
            continue
        r = GGUFReader(path)
        for tensor in r.tensors:
            if tensor.tensor_type == t and tensor.n_elements >= n_values(t) * 4:
                block, size = GGML_QUANT_SIZES[t]
                raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
                # Take blocks from the middle of the tensor, away from any special first rows.
                nbytes = n_values(t) // block * size
                start = (raw.size // 2) // size * size
                return raw[start:start + nbytes].copy(), f"{f}:{tensor.name}"
    return None, None


def synthetic_bytes(t, rng):
    block, size = GGML_QUANT_SIZES[t]
    n = n_values(t)
    if t == T.F32:
        return rng.standard_normal(n).astype(np.float32).view(np.uint8), "synthetic"
    if t == T.F16:
        return rng.standard_normal(n).astype(np.float16).view(np.uint8), "synthetic"
    if t == T.BF16:
        x = rng.standard_normal(n).astype(np.float32).view(np.uint32)
        return (x >> 16).astype(np.uint16).view(np.uint8), "synthetic"
    raw = rng.integers(0, 256, size=(n // block, size), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        scales = (rng.uniform(0.001, 0.05, size=n // block)).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1), "synthetic (random payload, f16 scales in [0.001, 0.05])"


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)
    for t in TYPES:
        raw, source = real_block_bytes(t)
        if raw is None:
            raw, source = synthetic_bytes(t, rng)
        values = dequantize(raw, t).astype(np.float32).reshape(-1)
        assert values.size == n_values(t), (t, values.size)
        with open(os.path.join(OUT, f"{t.name}.bin"), "wb") as f:
            f.write(raw.tobytes())
        with open(os.path.join(OUT, f"{t.name}.json"), "w") as f:
            json.dump({"type": t.name, "ggml_type_id": int(t), "source": source, "n_values": int(values.size),
                       "values": [float(v) for v in values]}, f)
        print(f"{t.name:5} {values.size:5} values from {source}")


if __name__ == "__main__":
    main()
