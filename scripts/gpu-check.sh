#!/usr/bin/env bash
# One command for a machine with a real GPU: builds specdec with wgpu, runs the GPU test tier,
# benchmarks the three short-name models on the device (prefill, decode, verification curve v(n),
# device memory; activations in f32 and, where the adapter has shader-f16, in f16) and runs the quickstart experiment with the target on the GPU and the draft on
# the GPU, then on the CPU. Everything lands in results/gpu/<date>-<adapter>/ with the adapter's
# name and driver (adapter.json).
#
# It stops with exit 1 before measuring anything when the only adapter is a software rasterizer
# (lavapipe, llvmpipe, WARP, SwiftShader) or there is none: its figures would be CPU figures.
#
#   bash scripts/gpu-check.sh
#   GPU_BANDWIDTH_GBS=448 bash scripts/gpu-check.sh   # the adapter's memory bandwidth, if known:
#                                                      # decode is then reported against it
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --release -p specdec-experiments --features wgpu
bin="$CARGO_TARGET_DIR/release/specdec"

adapter_json=$("$bin" gpu --require-hardware) || {
  echo "gpu-check: no hardware GPU adapter here (see above); nothing measured" >&2
  exit 1
}
slug=$(printf '%s' "$adapter_json" | python3 -c 'import json,re,sys; a=json.load(sys.stdin); print(re.sub(r"[^A-Za-z0-9]+","-",a["name"]).strip("-").lower())')
out="results/gpu/$(date +%Y%m%d-%H%M%S)-$slug"
mkdir -p "$out"
printf '%s\n' "$adapter_json" > "$out/adapter.json"
{ uname -a; grep -m1 'model name' /proc/cpuinfo || true; git rev-parse HEAD; git status --porcelain > "$out/git-status.txt" || true; } > "$out/machine.txt"
echo "gpu-check: adapter $(printf '%s' "$adapter_json" | python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["name"], "/", a["driver"], a["driver_info"])'); writing $out"

# The GPU test tier, on this adapter (a missing adapter fails rather than skips).
SPECDEC_WGPU=1 cargo test --release --workspace --features specdec-experiments/wgpu --test wgpu 2>&1 | tee "$out/tests.log"

# Bench: prefill, decode, v(n) and device memory per model, with activations in f32 and — where
# the adapter computes in f16 — in f16, interleaved per model.
floats="f32"
if printf '%s' "$adapter_json" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("f16") else 1)'; then
  floats="f32 f16"
fi
for model in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
  for float in $floats; do
    "$bin" bench --backend wgpu --device-float "$float" --model "$model" --prompt-tokens 128 --gen-tokens 64 --repeats 3 --json > "$out/bench-$model-$float.json"
  done
done
python3 - "$out" <<'PY' | tee "$out/bench.md"
import json, os, sys
out = sys.argv[1]
bw = float(os.environ["GPU_BANDWIDTH_GBS"]) if os.environ.get("GPU_BANDWIDTH_GBS") else None
print("| model | activations | prefill tok/s | decode tok/s | file GB/s at decode | of bandwidth | v(5) | device weights / file | reserved after run MB |")
print("|---|---|---|---|---|---|---|---|---|")
for model in ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]:
    for float in ["f32", "f16"]:
        path = f"{out}/bench-{model}-{float}.json"
        if not os.path.exists(path):
            continue
        j = json.load(open(path))
        gbs = j["decode_tok_s"] * j["file_bytes"] / 1e9
        v5 = j["verify_cost"].get("5")
        dm = j.get("device_memory") or {}
        mem, reserved = dm.get("weights_of_file"), dm.get("reserved_after_run_bytes")
        fmt = lambda x, f: "–" if x is None else format(x, f)
        print(f"| {model} | {j.get('device_float')} | {j['prefill_tok_s']:.1f} | {j['decode_tok_s']:.1f} | {gbs:.1f} | {fmt(gbs / bw if bw else None, '.0%')} | {fmt(v5, '.2f')} | {fmt(mem, '.2f')} | {fmt(reserved / 1e6 if reserved else None, '.0f')} |")
PY

# The quickstart: both models on the GPU, then the draft on the CPU and the target on the GPU.
both="$out/quickstart-gpu.toml"
split="$out/quickstart-draft-cpu.toml"
# A top-level key may precede the first table; the draft's backend goes into its own table.
{ echo 'backend = "wgpu"'; cat experiments/configs/quickstart.toml; } > "$both"
python3 - "$both" "$split" <<'PY'
import sys
text = open(sys.argv[1]).read()
table = '[models."qwen-0.5b"]\n'
assert table in text, "quickstart.toml has no [models.\"qwen-0.5b\"] table"
open(sys.argv[2], "w").write(text.replace(table, table + 'backend = "flex"\n', 1))
PY
grep -q '^backend = "flex"' "$split" || { echo "gpu-check: could not put the draft on the CPU" >&2; exit 1; }
"$bin" run "$both" --out "$out/runs"
"$bin" run "$split" --out "$out/runs"
echo "gpu-check: done; see $out"
