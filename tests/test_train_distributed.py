"""Integration: the same ``python -m train`` under ``accelerate launch`` with 2 processes (gloo on CPU, tiny
random Llama with the embedded tokenizer). Same global batch → the same losses and adapter as one process;
only rank 0 writes; the manifest records the world size; a multi-process run resumes from its checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curate import snapshot as snap
from curate.example import Example, Source
from curate.store import open_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from curate.models import materialize_chat_model

    d = tmp_path_factory.mktemp("dist")
    tok = AutoTokenizer.from_pretrained(materialize_chat_model())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    store = open_store(d / "ws")
    exs = [Example([{"role": "user", "content": f"customer query {i} " + "about cards " * (i % 5)},
                    {"role": "assistant", "content": f"label_{i % 4}"}], Source("ticket", "t.csv", f"row {i}"),
                   label=f"label_{i % 4}") for i in range(40)]
    store.add_examples(exs)
    for e in exs:
        store.add_event(e.id, "alice", "approve")
    snap.create(store, "v1")
    store.close()
    return d


def _args(d: Path, out: Path, batch: int) -> list[str]:
    return ["--snapshot", "v1", "--workspace", str(d / "ws"), "--base_model", str(d / "model"), "--output_dir",
            str(out), "--max_steps", "4", "--batch_size", str(batch), "--lora_dropout", "0", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--save_steps", "2", "--max_length", "64", "--lora_layers", "2"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_two_processes_match_one_and_resume(setup, tmp_path):
    d = setup
    one = tmp_path / "one"
    _run([sys.executable, "-m", "train", *_args(d, one, 8)])
    two = tmp_path / "two"
    p = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs/accelerate/ddp.yaml"), "--num_processes", "2", "-m", "train", *_args(d, two, 4)])
    man = json.loads((two / "manifest.json").read_text())
    assert man["world_size"] == 2 and man["engine"]["world_size"] == 2 and man["steps"] == 4
    assert p.stderr.count("preflight: one training example") == 1  # rank 0 alone talks
    l1, l2 = _losses(one), _losses(two)
    assert len(l2) == 4  # one line per step: rank 0 alone writes metrics
    assert l1 == pytest.approx(l2, rel=1e-4)
    a1, a2 = _adapter(one), _adapter(two)
    for k in a1:
        assert torch.allclose(a1[k], a2[k], atol=1e-5), k

    # resume a 2-process run from its step-2 checkpoint (the --num-processes shortcut this time)
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(two / "config.json", part / "config.json")
    shutil.copytree(two / "checkpoints" / "checkpoint-2", part / "checkpoints" / "checkpoint-2")
    _run([sys.executable, "-m", "train", "--resume", str(part), "--num-processes", "2"])
    man = json.loads((part / "manifest.json").read_text())
    assert man["steps"] == 4 and man["resumed"] and man["world_size"] == 2
    a3 = _adapter(part)
    for k in a2:
        assert torch.allclose(a2[k], a3[k], atol=1e-5), k
