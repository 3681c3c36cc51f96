"""Experiment tracking and the held-out loss logged during training.

``report_to`` (a comma list of ``tensorboard``, ``mlflow``, ``wandb``; ``none`` by default) sends every
logged record's numbers to those trackers, beside ``metrics.jsonl`` which is always written:

* ``tensorboard``: event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``);
* ``mlflow``: ``$MLFLOW_TRACKING_URI`` if set, else a file store in ``RUN/mlruns``; the config as params;
* ``wandb``: offline unless ``WANDB_MODE`` says otherwise, files in ``RUN/wandb``.

A tracker whose package is not installed is refused before training with the pip command that adds it.

The eval loss (``eval_steps``) is the mean assistant-token loss of the first ``eval_examples`` held-out
examples, tokenized exactly like training. It is logged only: nothing in training reads it (no early
stopping or checkpoint choice), so the held-out split stays out of every training decision.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name -> package it needs


def parse_report_to(value: str) -> list[str]:
    names = [v.strip() for v in (value or "none").split(",") if v.strip() and v.strip() != "none"]
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise ValueError(f"report_to: unknown tracker(s) {bad}; choose from none, {', '.join(TRACKERS)}")
    return names


def check_installed(names: list[str]) -> None:
    missing = [TRACKERS[n] for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise RuntimeError(f"report_to needs {', '.join(missing)}: pip install {' '.join(missing)}")


class Trackers:
    """Fan-out of scalar records to the configured trackers (rank 0 only)."""

    def __init__(self, names: list[str], run_dir: Path, params: dict[str, Any], resumed: bool = False):
        self.names, self.run_dir = names, Path(run_dir)
        self._tb = self._mlflow = self._wandb = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if "mlflow" in names:
            self._mlflow = self._start_mlflow(params, resumed)
        if "wandb" in names:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(project="workbench", name=self.run_dir.name, dir=str(self.run_dir),
                                     config=params, resume="allow")

    def _start_mlflow(self, params: dict[str, Any], resumed: bool):
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # a file store inside the run folder keeps a run self-contained (no database or server); MLflow 3
            # asks for an explicit opt-in to file stores
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((self.run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment("workbench")
        id_file = self.run_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else None
        run = mlflow.start_run(run_id=run_id, run_name=self.run_dir.name)
        id_file.write_text(run.info.run_id)
        if run_id is None:
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
        return mlflow

    def log(self, rec: dict[str, Any]) -> None:
        step = int(rec.get("step", 0))
        scalars = {k: float(v) for k, v in rec.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k.replace("eval_", "eval/") if k.startswith("eval_") else f"train/{k}", v, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()


def eval_loss_fn(model, examples: list[dict], device: str, batch: int = 8) -> Callable[[], float]:
    """A function computing the mean target-token loss of ``examples`` under ``model`` (LoRA layers included:
    PEFT injects them into the base modules in place) without touching its training state or the RNG."""
    import torch
    import torch.nn.functional as F

    from .packing import IGNORE

    def run() -> float:
        was_training = model.training
        model.eval()
        tot, n = 0.0, 0
        try:
            with torch.no_grad(), (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                                   else torch.autocast("cpu", enabled=False)):
                for e in examples:
                    ids = torch.tensor([e["input_ids"]], device=device)
                    y = torch.tensor(e["labels"][1:], device=device)
                    logits = model(input_ids=ids).logits[0, :-1].float()
                    tot += float(F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum"))
                    n += int((y != IGNORE).sum())
        finally:
            model.train(was_training)
        return tot / max(n, 1)

    return run


def metrics_logger(run_dir: Path, rank: int, trackers: Trackers | None, eval_fn: Callable[[], float] | None,
                   eval_steps: int, total_steps: Callable[[], int]) -> Callable[[dict], None]:
    """The ``log_metrics`` both engines call (rank 0 writes): appends to ``metrics.jsonl``, adds the eval loss
    to the first logged record at least ``eval_steps`` steps after the last one and to the last step's, and
    forwards to the trackers."""
    import time

    path = Path(run_dir) / "metrics.jsonl"
    last_eval = [0]

    def log_metrics(rec: dict) -> None:
        if rank:
            return
        step = int(rec.get("step", 0))
        due = step - last_eval[0] >= eval_steps or step >= total_steps()
        if eval_fn is not None and eval_steps > 0 and "loss" in rec and due:
            rec = {**rec, "eval_loss": eval_fn()}
            last_eval[0] = step
        with open(path, "a") as f:
            f.write(json.dumps({"time": time.time(), **rec}) + "\n")
        if trackers is not None:
            trackers.log(rec)

    return log_metrics
