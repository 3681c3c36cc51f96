"""Greedy batched generation for evaluation: base model and base + LoRA adapter.

Owns: loading a run folder's base model, tokenizer (with the chat template the
adapter was trained with) and adapter; rendering held-out prompts with
``add_generation_prompt=True``; left-padded greedy decoding in batches with a
progress bar. The base model is the same weights with the adapter disabled, so
both see byte-identical prompts.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence


def load_run(run_dir: Path):
    """(model with adapter, tokenizer, manifest) for a ``python -m train`` run folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import materialize_chat_model

    manifest = json.loads((run_dir / "manifest.json").read_text())
    base = manifest["config"].get("base_model_path") or materialize_chat_model(manifest["config"]["base_model"])
    tok = AutoTokenizer.from_pretrained(run_dir)
    tpl = run_dir / "chat_template.jinja"
    if tpl.exists():
        tok.chat_template = tpl.read_text()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32)
    model = PeftModel.from_pretrained(model, run_dir / manifest.get("adapter", "adapter"))
    model.eval()
    if cuda:
        model.to("cuda")
    return model, tok, manifest


def prompts_for(tok, rows: Sequence[dict]) -> list[str]:
    """Everything before the last assistant turn, rendered as the serving prompt."""
    return [tok.apply_chat_template(list(r["messages"])[:-1], tokenize=False, add_generation_prompt=True) for r in rows]


def generate(model, tok, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 32,
             desc: str = "generate") -> list[str]:
    import torch
    from tqdm import tqdm

    outs: list[str] = []
    end_ids = [tok.eos_token_id]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        end_ids.append(im_end)
    with torch.inference_mode():
        for i in tqdm(range(0, len(prompts), batch_size), desc=desc, file=sys.stderr, unit="batch"):
            batch = prompts[i:i + batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                                 pad_token_id=tok.pad_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                outs.append(tok.decode(row, skip_special_tokens=True).strip())
    return outs
