"""train_fast on CPU (LoRA, tiny random Llama): first-step loss equals the plain HF loss over the same data,
with and without packing, and the adapter is saved."""
import random

import torch

from train.fast import FastConfig, train_fast


def test_train_fast_cpu_first_loss_matches_plain(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, use_cache=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    rng = random.Random(0)
    exs = []
    for _ in range(16):
        ids = [rng.randrange(1, 97) for _ in range(rng.randint(4, 30))]
        exs.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    tot = n = 0
    with torch.no_grad():
        for e in exs:
            k = sum(1 for x in e["labels"][1:] if x != -100)
            tot += float(plain(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss) * k
            n += k
    ref = tot / n
    for packing in (True, False):
        # the first optimizer step covers every example exactly once: packed = all in one 512-token row,
        # unpacked = 16 rows of 32 in one micro-batch
        L = 512 if packing else 32
        fc = FastConfig(max_length=L, tokens_per_step=L if packing else 32 * 16, max_steps=2, packing=packing,
                        quantize="none")
        m = train_fast(str(tmp_path / "m"), None, exs, fc, tmp_path / f"out{packing}")
        assert abs(m["losses"][0] - ref) / ref < 1e-4, (packing, m["losses"][0], ref)
        assert (tmp_path / f"out{packing}" / "adapter" / "adapter_config.json").exists()
        assert m["packing"]["real_tokens"] == sum(len(e["input_ids"]) for e in exs)
