#!/usr/bin/env bash
# Makes a "quantized twin" draft: the target's own GGUF re-quantized to a lower precision with
# llama.cpp's llama-quantize, so that the draft differs from the target by quantization error alone
# (issue 7; experiments/configs/quantized-twin.toml uses the two made by default).
#
#   scripts/make_quantized_twin.sh                      # SmolLM2-135M Q4_1 → Q4_0, Qwen2.5-Coder-1.5B Q4_K_M → Q4_0
#   scripts/make_quantized_twin.sh SRC.gguf TYPE OUT.gguf
#
# The engine reads F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K, so pick TYPE among those
# (Q4_0 is the usual "smaller quant" here). Twins go to models/twins/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA=$(bash ../shared/tools/llama-cpp.sh)
quantize() { # SRC TYPE OUT
  mkdir -p "$(dirname "$3")"
  if [ -s "$3" ]; then echo "$3 exists"; return; fi
  "$LLAMA/llama-quantize" --allow-requantize "$1" "$3.tmp" "$2" >/dev/null
  mv "$3.tmp" "$3"
  echo "$3"
}
if [ $# -eq 3 ]; then quantize "$1" "$2" "$3"; exit 0; fi
CACHE=${SPECDEC_CACHE:-$HOME/.cache/specdec}
# The short names resolve (and download) through the engine; `specdec inspect` prints the file.
SPECDEC=${SPECDEC_BIN:-target/release/specdec}
[ -x "$SPECDEC" ] || cargo build --release -q -p specdec-experiments
for m in smollm2-135m qwen2.5-coder-1.5b; do "$SPECDEC" inspect "$m" >/dev/null; done
quantize "$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" Q4_0 models/twins/smollm2-135m-q4_0.gguf
quantize "$CACHE/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" Q4_0 models/twins/qwen2.5-coder-1.5b-q4_0.gguf
