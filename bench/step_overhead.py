"""Per-step CPU overhead of the fast engine's forward+backward, on CPU: PEFT's LoRA layers vs the fused ones.

On the H200 the 24-example 1B step is CPU-bound (docs/gpu.md): the GPU waits for Python to queue kernels.
This benchmark isolates that cost where it can be measured without a GPU: a Llama-shaped decoder with the
1B shape's depth (16 layers, LoRA r16 on every linear, every layer checkpointed, as the capped run does) but
tiny widths, so the arithmetic is negligible and the step time is almost all per-op overhead (Python, autograd,
dispatch). Both variants run interleaved in the same process, on one thread, timed in process CPU time (a busy
neighbour on the host moves wall time by ±20% here); the JSON has the medians, every round, and the ratio. It says how much host time a variant saves per step, not GPU tokens/s.

  python bench/step_overhead.py [--rounds 5] [--steps 20] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each variant (median reported)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round (after 3 untimed)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.engine import run_layers
    from train.kernels import fusable_lora_modules, fused_lora, linear_cross_entropy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=a.layers,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model.config.use_cache = False
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    pm.train()
    body, head = pm.get_base_model().model, pm.get_base_model().lm_head
    mods = fusable_lora_modules(pm)
    ids = torch.randint(3, 512, (1, a.tokens))
    pos = torch.arange(a.tokens)[None]

    def step(fused: bool) -> float:
        with fused_lora(mods if fused else []):
            h = run_layers(body, body.embed_tokens(ids), pos, 0, a.layers, final_norm=True,
                           checkpoint_layers=a.layers)
            loss, _ = linear_cross_entropy(h, head.weight, ids, use_liger=False)
            loss.backward()
        pm.zero_grad(set_to_none=True)
        return float(loss)

    variants = {"peft": False, "fused_lora": True}
    samples: dict[str, list[float]] = {k: [] for k in variants}
    losses = {k: step(v) for k, v in variants.items()}
    for _ in range(a.rounds):
        for name, fused in variants.items():
            for _ in range(3):
                step(fused)
            t = time.process_time()  # this process's CPU time: what the host spends, not what neighbours take
            for _ in range(a.steps):
                step(fused)
            samples[name].append((time.process_time() - t) / a.steps * 1000)
    med = {k: statistics.median(v) for k, v in samples.items()}
    res = {"what": "process CPU ms per forward+backward, tiny widths (per-op overhead only)", "layers": a.layers,
           "tokens": a.tokens, "lora_layers_fused": len(mods), "torch": torch.__version__,
           "ms_per_step": {k: round(v, 2) for k, v in med.items()},
           "rounds": {k: [round(x, 2) for x in v] for k, v in samples.items()},
           "fused_lora_vs_peft": round(med["fused_lora"] / med["peft"], 3),
           "loss": losses}
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
