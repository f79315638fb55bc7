"""LoRA adapters made by PEFT on the tiny HF fixtures, and transformers' logits with each applied.

Writes, under engine/tests/fixtures/lora/:
  <arch>/            adapter_config.json + adapter_model.safetensors (PEFT's save_pretrained):
                     rank 4, alpha 8, on q/k/v/o/gate/up/down of every layer; B drawn at random
                     (PEFT initializes it to zero, which would make the adapter invisible)
  <arch>-zero/       the same adapter as PEFT initializes it (B = 0): must change nothing
  <arch>.ref.json    tokens, and the logits of transformers + PEFT with <arch>/ applied
for arch in llama (rows of Q/K permuted in its GGUF: the adapter must follow), qwen2 (rsLoRA:
scale alpha/sqrt(r)) and gemma3.

Needs: pip install torch transformers peft safetensors numpy
(made with torch 2.15.0, transformers 5.23.0, peft, see README.md). Run: python3 scripts/make_lora_fixtures.py
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

TINY = "engine/tests/fixtures/tiny"
OUT = "engine/tests/fixtures/lora"
TOKENS = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save(peft_model, name):
    path = os.path.join(OUT, name)
    peft_model.save_pretrained(path)
    os.remove(os.path.join(path, "README.md"))  # PEFT's model-card template: nothing of ours


def main():
    os.makedirs(OUT, exist_ok=True)
    for seed, (arch, rslora) in enumerate([("llama", False), ("qwen2", True), ("gemma3", False)]):
        torch.manual_seed(1000 + seed)
        model = AutoModelForCausalLM.from_pretrained(os.path.join(TINY, f"{arch}-hf"), dtype=torch.float32)
        model.eval()
        config = LoraConfig(r=4, lora_alpha=8, target_modules=MODULES, lora_dropout=0.0, bias="none", use_rslora=rslora)
        peft_model = get_peft_model(model, config)
        save(peft_model, f"{arch}-zero")
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.3)
        save(peft_model, arch)
        with torch.no_grad():
            logits = peft_model(torch.tensor([TOKENS])).logits[0]
        with torch.no_grad(), peft_model.disable_adapter():
            plain = peft_model(torch.tensor([TOKENS])).logits[0]
        ref = {
            "tokens": TOKENS,
            "logits": logits.tolist(),
            # How far the adapter moves the logits: the test's tolerance must be far below it.
            "max_abs_change": float((logits - plain).abs().max()),
        }
        with open(os.path.join(OUT, f"{arch}.ref.json"), "w") as f:
            json.dump(ref, f)
        print(arch, "max |logit change| from the adapter:", ref["max_abs_change"])


if __name__ == "__main__":
    main()
