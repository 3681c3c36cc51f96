"""``make demo``: ingest data/banking77_demo, approve by rule, snapshot, train on CPU, evaluate, print the table.

Own workspace runs/demo/workspace (wiped on every run so the demo is idempotent).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WS = ROOT / "runs" / "demo" / "workspace"
RUN = ROOT / "runs" / "demo" / "run"


def sh(*args: str) -> None:
    print("$ python " + " ".join(args), flush=True)
    rc = subprocess.call([sys.executable, *args], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if rc:
        sys.exit(f"demo step failed (exit {rc}): python {' '.join(args)}")


def main() -> None:
    shutil.rmtree(ROOT / "runs" / "demo", ignore_errors=True)
    ws = ["--workspace", str(WS)]
    sh("-m", "curate", "ingest", "data/banking77_demo", *ws)
    sh("-m", "curate", "review", "approve", "--rule", "--reviewer", "demo-rule", "--status", "pending", *ws)
    sh("-m", "curate", "snapshot", "create", "demo", *ws)
    sh("-m", "train", "--snapshot", "demo", *ws, "--output_dir", str(RUN), "--threads", "2",
       "--max_length", "128", "--epochs", "2", "--batch_size", "8", "--learning_rate", "5e-4")
    sh("-m", "evaluate", "--run", str(RUN), "--threads", "2", "--batch-size", "32")


if __name__ == "__main__":
    main()
