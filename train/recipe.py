"""The training recipe: verified snapshot → (Q)LoRA adapter run folder.

One recipe for CPU and CUDA: on CUDA the base is loaded in 4-bit NF4 with double quantisation and bf16
compute (QLoRA); on CPU bitsandbytes' NF4 is slower than plain LoRA, so the base stays fp32 and a one-line
notice says so. The base model is resolved by :func:`curate.models.resolve_model` (hub id through the HF
cache, folder, .gguf or embedded). Loss is on assistant tokens only, in the base model's own chat template
(:mod:`train.template`, checked by its preflight). Only the snapshot's ``train`` split is read; the held-out
ids are loaded solely to assert they never enter the data.

Two engines share everything above (tokenized ids and labels, LoRA config, optimizer, schedule, run folder):
``fast`` (default, :mod:`train.engine`: packing, target-only loss head, frozen-prefix cache, Liger on CUDA)
and ``trl`` (TRL ``SFTTrainer`` on the same pre-tokenized ids and labels, the reference). A model the fast
engine does not reproduce exactly trains on ``trl`` with a one-line notice. See docs/train.md.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from curate import snapshot as snap
from curate.store import open_store

from .config import TrainConfig
from .template import TemplateMismatch, preflight, serving_template, training_template


class TrainError(RuntimeError):
    pass


RANK = 0  # process rank under `accelerate launch` / torchrun (0 when single-process)


def log(msg: str) -> None:
    if RANK == 0:
        print(msg, file=sys.stderr, flush=True)


def init_distributed(cuda: bool) -> tuple[int, int, int]:
    """(rank, world size, local rank). Under `accelerate launch` (or torchrun) WORLD_SIZE > 1: join the process
    group (NCCL on CUDA, gloo on CPU). Every rank runs the same recipe; only rank 0 writes the run folder."""
    global RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise TrainError("FSDP is not run by this recipe yet: use the DDP config (configs/accelerate/ddp.yaml); "
                         "see docs/train.md 'Several GPUs'")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    RANK = dist.get_rank()
    return RANK, dist.get_world_size(), local


def _broadcast(obj):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def load_snapshot(name: str, workspace: str | None) -> tuple[Path, dict, list[dict], set[str]]:
    """(snapshot dir, manifest, verified train rows, held-out ids) or TrainError."""
    store = open_store(workspace)
    try:
        problems = snap.verify(store, name)
    except snap.SnapshotError as e:
        raise TrainError(str(e)) from None
    if problems:
        raise TrainError(f"snapshot {name!r} failed verification, refusing to train: " + "; ".join(problems))
    d = snap.snapshots_dir(store) / name
    manifest = snap.show(store, name)
    train_rows = snap.load(d, split="train")
    held_ids = {r["id"] for r in snap.load(d, split="heldout")}
    not_approved = [r["id"] for r in train_rows if r.get("status") != "approved"]
    if not_approved:
        raise TrainError(f"snapshot {name!r} contains {len(not_approved)} record(s) that are not approved")
    return d, manifest, train_rows, held_ids


def check_isolation(train_rows: list[dict], held_ids: set[str]) -> None:
    """Held-out isolation: no row of the training data is held out (by id or by its split field)."""
    leaked = [r["id"] for r in train_rows if r["id"] in held_ids or r.get("split") != "train"]
    if leaked:
        raise TrainError(f"{len(leaked)} held-out record(s) would enter training: {leaked[:3]}")


def build_dataset(ts, held_ids: set[str]):
    """The TRL engine's data: the same tokenized train examples (ids and labels) the fast engine trains on."""
    import datasets

    if set(ts.ids) & held_ids:
        raise TrainError("held-out records in the tokenized train set")
    return datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in ts.examples])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "absent"
    return out


def _hardware() -> dict[str, Any]:
    import torch

    hw = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        hw["cuda_device"] = torch.cuda.get_device_name(0)
        hw["cuda_count"] = torch.cuda.device_count()
    return hw


def _plot_loss(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    train = [(m["step"], m["loss"]) for m in recs if "loss" in m and "step" in m]
    held = [(m["step"], m["eval_loss"]) for m in recs if "eval_loss" in m]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), marker="o", ms=3, label="train") if train else None
    ax.plot(*zip(*held), marker="s", ms=4, label="held-out (eval_loss)") if held else None
    ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(out.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def last_checkpoint(run_dir: Path) -> Path | None:
    cks = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return cks[-1] if cks else None


def attention_implementation(model_path) -> str:
    """SDPA, except for models that soft-cap attention logits (Gemma 2): SDPA has no soft-cap, eager applies it."""
    from transformers import AutoConfig

    return "eager" if getattr(AutoConfig.from_pretrained(model_path), "attn_logit_softcapping", None) else "sdpa"


def load_base(model_path, quant: str, cuda: bool, local_rank: int = 0):
    """The frozen base: NF4 + double quant + bf16 compute on CUDA (QLoRA), bf16 on CUDA without quantization,
    fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"attn_implementation": attention_implementation(model_path)}
    if quant == "nf4":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        kw["dtype"] = torch.bfloat16
        kw["device_map"] = {"": local_rank}
    else:
        kw["dtype"] = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, **kw)
    if cuda and quant != "nf4":
        model = model.cuda(local_rank)
    return model


def lora_config(cfg: TrainConfig, model):
    """LoRA over cfg.lora_targets, optionally only in the top cfg.lora_layers layers."""
    import torch
    from peft import LoraConfig

    targets: Any = "all-linear" if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    layer_kw: dict[str, Any] = {}
    if cfg.lora_layers:
        n_layers = model.config.num_hidden_layers
        if cfg.lora_layers > n_layers:
            raise TrainError(f"lora_layers={cfg.lora_layers} but the model has {n_layers} layers")
        if targets == "all-linear":  # PEFT needs explicit names with layers_to_transform
            targets = sorted({n.split(".")[-1] for n, mod in model.named_modules()
                              if ".layers." in n and (isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Linear4bit")})
        layer_kw["layers_to_transform"] = list(range(n_layers - cfg.lora_layers, n_layers))
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", **layer_kw)


def _train_trl(cfg: TrainConfig, model, tok, ds, peft_cfg, run_dir: Path, resume, cuda: bool, log_metrics) -> dict:
    """The reference engine: TRL SFTTrainer on the pre-tokenized ids and labels (-100 outside assistant turns)."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    sft = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_length=cfg.max_length,
        packing=cfg.packing,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=cuda,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        include_num_input_tokens_seen=True,
    )

    class MetricsLog(TrainerCallback):
        def __init__(self) -> None:
            self.t_last = time.time()
            self.tok_last = 0.0

        def on_log(self, args, state, control, logs=None, **kw2):
            if not logs or not state.is_world_process_zero:
                return
            now = time.time()
            rec = {"step": state.global_step, "epoch": state.epoch, **logs}
            ntok = logs.get("num_tokens")
            if ntok is not None:
                rec["tokens_per_s"] = (ntok - self.tok_last) / max(now - self.t_last, 1e-9)
                self.tok_last = ntok
            self.t_last = now
            log_metrics(rec)

    trainer = SFTTrainer(model=model, args=sft, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[MetricsLog()])
    ckpt = last_checkpoint(run_dir) if resume is not None else None
    if resume is not None:
        log(f"resuming from {ckpt}" if ckpt else f"no checkpoint in {run_dir}/checkpoints yet — starting from step 0")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    trainer.model.save_pretrained(run_dir / "adapter")
    st = trainer.state
    return {"steps": st.global_step, "max_steps": st.max_steps, "epochs": st.epoch,
            "tokens_seen": int(st.num_input_tokens_seen or 0) or int(next((m.get("num_tokens") for m in reversed(st.log_history) if "num_tokens" in m), 0)),
            "train_loss": result.training_loss, "train_seconds": round(time.time() - t0, 1),
            "engine": {"name": "trl", "trl_version": _versions()["trl"]}}


def _quantization(cfg: TrainConfig, cuda: bool) -> str:
    quant = cfg.quantization
    if quant == "auto":
        quant = "nf4" if cuda else "none"
    if quant == "nf4" and not cuda:
        log("notice: CPU run — training plain LoRA in fp32 (bitsandbytes NF4 runs on CPU but is slower than LoRA there); QLoRA is used on CUDA")
        quant = "none"
    elif not cuda:
        log("notice: no CUDA device — training plain LoRA in fp32 on CPU (QLoRA 4-bit NF4 is used on CUDA)")
    return quant


def _run_dir(snapshot: str, cfg: TrainConfig, resume: Path | None) -> Path:
    if resume is not None:
        return Path(resume)
    run_dir = Path(_broadcast(cfg.output_dir or f"runs/{snapshot}-{time.strftime('%Y%m%d-%H%M%S')}"))
    busy = run_dir.exists() and any(run_dir.iterdir())
    _barrier()  # every rank has looked before rank 0 writes
    if busy:
        raise TrainError(f"run folder {run_dir} exists and is not empty; use --resume {run_dir} or another --output-dir")
    return run_dir


def prepare_tokenizer(model_path, train_rows: list[dict]):
    """(tokenizer with the training template set, training template, marked example) after the preflight."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    try:
        train_tpl = training_template(tok)
        # serving = what export writes for llama.cpp/Ollama: the model's own template (markers, if any, stripped)
        marked = preflight(tok, train_rows, train_tpl, serving_template(train_tpl))  # the base template is train_tpl itself
    except TemplateMismatch as e:
        raise TrainError(f"template preflight failed: {e}") from None
    tok.chat_template = train_tpl
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, train_tpl, marked


def _tokenized(cfg: TrainConfig, tok, train_rows, train_tpl: str, snap_manifest: dict, held_ids: set[str]):
    from curate.models import cache_dir

    from .data import cached_tokenize_rows

    ts, cached = cached_tokenize_rows(tok, train_rows, train_tpl, cfg.max_length,
                                      [snap_manifest["files"]["train.parquet"]["sha256"]], cache_dir() / "tokenized")
    if cached:
        log("data: pre-tokenized set reused from the cache (same snapshot file, tokenizer, template, max_length)")
    if set(ts.ids) & held_ids:
        raise TrainError("held-out records in the tokenized train set")  # check_isolation ran; belt and braces
    if ts.dropped_no_target:
        log(f"warning: {len(ts.dropped_no_target)} example(s) have no assistant token within max_length="
            f"{cfg.max_length} and are not trained on (listed in manifest.json → data.dropped_ids)")
    if not ts.examples:
        raise TrainError("no trainable example: every assistant turn lies beyond max_length")
    log(f"data: {len(ts.examples)} examples, {ts.tokens} tokens ({ts.target_tokens} trained), "
        f"{ts.truncated} truncated at max_length={cfg.max_length}")
    return ts


def choose_engine(cfg: TrainConfig, model, world: int) -> str:
    """cfg.engine, except that a model the fast engine does not reproduce exactly trains on TRL (said once)."""
    from .engine import fast_engine_unsupported

    if cfg.engine != "fast":
        return cfg.engine
    why = fast_engine_unsupported(model)
    if why is None:
        return "fast"
    if world > 1:
        raise TrainError(f"the fast engine cannot train this model ({why}) and multi-process training needs it")
    log(f"notice: the fast engine cannot train this model exactly ({why}) — training with the TRL engine "
        f"(same data, masks and LoRA)")
    return "trl"


def _train_fast(cfg: TrainConfig, model, tok, ts, peft_cfg, run_dir: Path, resume, cuda: bool, quant: str,
                log_metrics, rank: int, world: int) -> tuple[dict, Any]:
    from peft import get_peft_model

    from .engine import COMPILE_MIN_STEPS, planned_steps, train_engine, use_compile

    model.config.use_cache = False
    steps = planned_steps(cfg, len(ts.examples), world)
    compiled = use_compile(cfg, cuda, steps)  # the one compile decision: Liger is applied or not by it, the engine takes it
    if compiled:
        log(f"torch.compile: the trained layers are compiled (compile={cfg.compile}, {steps} steps; a one-off "
            f"compile before step 1)" + (", Liger's fused loss head kept" if cuda else ""))
    elif cuda and cfg.compile == "auto":
        log(f"torch.compile: off ({steps} steps < {COMPILE_MIN_STEPS}: the one-off compile would not pay; "
            f"--compile on forces it)")
    if cuda and not compiled:
        from .kernels import apply_liger, liger_available

        if liger_available():
            log(f"liger kernels: {apply_liger(model)}")
    pm = get_peft_model(model, peft_cfg)
    ckpt = last_checkpoint(run_dir) if resume is not None else None
    if resume is not None:
        log(f"resuming from {ckpt}" if ckpt else f"no checkpoint in {run_dir}/checkpoints yet — starting from step 0")
    summary = train_engine(cfg, pm, tok, ts.examples, run_dir, device="cuda" if cuda else "cpu", quant=quant,
                           resume_ckpt=ckpt, log_metrics=log_metrics, rank=rank, world=world, compiled=compiled)
    return summary, pm


def _model_record(resolved, model, quant: str) -> dict:
    """The run manifest's ``model``: where the base came from and how it was loaded."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = str(getattr(base, "dtype", "")).replace("torch.", "")
    return resolved.record(model_type=base.config.model_type, architecture=type(base).__name__,
                           dtype="nf4" if quant == "nf4" else dtype, compute_dtype=dtype, quantization=quant,
                           attn_implementation=getattr(base.config, "_attn_implementation", None))


def _trackers(cfg: TrainConfig, run_dir: Path, rank: int, resumed: bool, snapshot: str):
    from .tracking import Trackers, check_installed, parse_report_to

    names = parse_report_to(cfg.report_to)
    if not names or rank:
        return None
    try:
        check_installed(names)
    except RuntimeError as e:
        raise TrainError(str(e)) from None
    return Trackers(names, run_dir, {"snapshot": snapshot, **cfg.to_dict()}, resumed=resumed)


def _metrics_logger(cfg: TrainConfig, tok, train_tpl: str, snap_dir: Path, model, run_dir: Path, rank: int,
                    trackers, cuda: bool, n_examples: int, world: int):
    """log_metrics for both engines; the eval loss on the first ``eval_examples`` held-out rows (by id)."""
    from .data import tokenize_rows
    from .engine import planned_steps
    from .tracking import eval_loss_fn, metrics_logger

    eval_fn = None
    if cfg.eval_steps and cfg.eval_examples and rank == 0:
        held = sorted(snap.load(snap_dir, split="heldout"), key=lambda r: r["id"])[: cfg.eval_examples]
        ex = tokenize_rows(tok, held, train_tpl, cfg.max_length).examples if held else []
        eval_fn = eval_loss_fn(model, ex, "cuda" if cuda else "cpu") if ex else None
    return metrics_logger(run_dir, rank, trackers, eval_fn, cfg.eval_steps,
                          lambda: planned_steps(cfg, n_examples, world))


def train(snapshot: str, cfg: TrainConfig, workspace: str | None = None, resume: Path | None = None) -> Path:
    t0 = time.time()
    import torch

    from curate.models import ModelNotFound, resolve_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    snap_dir, snap_manifest, train_rows, held_ids = load_snapshot(snapshot, workspace)
    check_isolation(train_rows, held_ids)
    cuda = torch.cuda.is_available()
    rank, world, local_rank = init_distributed(cuda)
    if world > 1 and cfg.engine == "trl":
        raise TrainError("multi-process training runs on the fast engine (the default); drop --engine trl")
    try:
        resolved = resolve_model(cfg.base_model)
    except ModelNotFound as e:
        raise TrainError(str(e)) from None
    quant = _quantization(cfg, cuda)
    run_dir = _run_dir(snapshot, cfg, resume)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"snapshot": snapshot, "workspace": workspace, "config": cfg.to_dict()}, indent=2))
    log(f"base model: {resolved.spec} → {resolved.path}" + (f" (commit {resolved.commit})" if resolved.commit else ""))
    tok, train_tpl, marked = prepare_tokenizer(resolved.path, train_rows)
    log("preflight: one training example as the model sees it (trained tokens in ⟦…⟧):\n" + marked)
    ts = _tokenized(cfg, tok, train_rows, train_tpl, snap_manifest, held_ids)

    torch.manual_seed(cfg.seed)  # LoRA init
    model = load_base(resolved.path, quant, cuda, local_rank)
    model_rec = _model_record(resolved, model, quant)
    peft_cfg = lora_config(cfg, model)
    metrics_path = run_dir / "metrics.jsonl"
    trackers = _trackers(cfg, run_dir, rank, resume is not None, snapshot)
    log_metrics = _metrics_logger(cfg, tok, train_tpl, snap_dir, model, run_dir, rank, trackers, cuda,
                                  len(ts.examples), world)
    engine = choose_engine(cfg, model, world)
    if engine == "fast":
        summary, pm = _train_fast(cfg, model, tok, ts, peft_cfg, run_dir, resume, cuda, quant, log_metrics, rank, world)
        if rank == 0:
            pm.save_pretrained(run_dir / "adapter")
    else:
        summary = _train_trl(cfg, model, tok, build_dataset(ts, held_ids), peft_cfg, run_dir, resume, cuda, log_metrics)
    summary["data"] = ts.summary()
    if trackers is not None:
        trackers.close()
    if rank:
        _barrier()
        return run_dir
    tok.save_pretrained(run_dir)
    (run_dir / "chat_template.jinja").write_text(train_tpl)
    if metrics_path.exists():
        _plot_loss(metrics_path, run_dir / "loss.png")
    manifest = {
        "snapshot": {"name": snapshot, "path": str(snap_dir.resolve()), "workspace": str(Path(workspace).resolve()) if workspace else None,
                     "files": snap_manifest["files"], "train_rows": len(train_rows), "heldout_rows": len(held_ids)},
        "config": {**cfg.to_dict(), "base_model_path": str(resolved.path)},
        "model": model_rec,
        "seed": cfg.seed,
        "quantization": quant,
        "device": "cuda" if cuda else "cpu",
        "versions": _versions(),
        "hardware": _hardware(),
        **summary,
        "world_size": world,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "wall_time_s": round(time.time() - t0, 1),
        "resumed": resume is not None,
        "chat_template": "chat_template.jinja",
        "adapter": "adapter",
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    from .card import write_card

    write_card(run_dir)
    _barrier()
    return run_dir
