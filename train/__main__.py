"""``python -m train --snapshot NAME`` — fine-tune a (Q)LoRA adapter on an approved snapshot.

``python -m train export --run RUN_DIR --format merged|gguf|ollama`` exports a run for serving.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# CUDA: grow allocator segments instead of caching fixed blocks, so varying micro-batch shapes (packed rows,
# the last micro-batch of a step) do not fragment memory under a gpu_memory_gib cap. Set before torch touches
# CUDA; a value the user exported wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from .config import field_help, load  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Fine-tune a LoRA adapter (4-bit NF4 QLoRA on CUDA, fp32 LoRA on CPU) on the train split of a "
                    "verified, approved snapshot; loss on assistant tokens only. Writes a run folder with the adapter, "
                    "tokenizer + chat template, manifest.json, metrics.jsonl and loss.png.\n\n"
                    "Engines: 'fast' (default; packing, target-only loss head, frozen-prefix cache with --lora_layers) "
                    "or 'trl' (TRL SFTTrainer), same data and masks. Several processes: --num-processes N.\n"
                    "Config precedence: defaults < --config FILE.toml < --key value flags. Guide: docs/train.md\n"
                    "Export a finished run: python -m train export --run RUN_DIR --format merged|gguf|ollama",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--snapshot", help="snapshot name in the workspace (python -m curate snapshot list)")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder (default: $WORKBENCH_HOME or data/workspace)")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file whose top-level keys are config fields")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint (same steps in the end)")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="shortcut for `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes N "
                        "-m train ...`: N processes (one per GPU; gloo on CPU), batch_size is per process")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON (run folder, steps, "
                                                      "losses, tokens, resolved model) instead of the run folder")
    g = p.add_argument_group("training config (every field; --key-name value, --key_name works too; TOML keys "
                             "are the field names with underscores)")
    for name, default, help_ in field_help():
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", default=None, metavar="V",
                       help=f"{help_} (default: {default!r})")
    return p


DDP_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "accelerate" / "ddp.yaml"


def _relaunch(argv: list[str], n: int) -> int:
    """Re-run this command under `accelerate launch` with N processes (without the --num-processes flag)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--num-processes", "--num_processes"):
            skip = True
            continue
        if a.startswith(("--num-processes=", "--num_processes=")):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
           "--num_processes", str(n), "-m", "train", *rest]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from .export import main as export_main

        return export_main(argv[1:])
    from curate.entry import flag_spellings

    with flag_spellings():  # --batch-size (documented) or --batch_size
        args = build_parser().parse_args(argv)
    if args.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _relaunch(argv, args.num_processes)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    try:
        from .recipe import TrainError, train

        resume = Path(args.resume) if args.resume else None
        snapshot = args.snapshot
        workspace = args.workspace
        if resume is not None:
            import json

            saved = json.loads((resume / "config.json").read_text()) if (resume / "config.json").exists() else None
            if saved is None:
                print(f"error: {resume} is not a run folder (no config.json)", file=sys.stderr)
                return 2
            snapshot = snapshot or saved["snapshot"]
            workspace = workspace or saved.get("workspace")
            overrides = {**saved["config"], **overrides}
        if not snapshot:
            print("error: --snapshot NAME is required (python -m curate snapshot list)", file=sys.stderr)
            return 2
        cfg = load(args.config, overrides)
        run_dir = train(snapshot, cfg, workspace, resume)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        import json

        man = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").exists() else {}
        keys = ("steps", "epochs", "tokens_seen", "train_loss", "train_seconds", "wall_time_s", "quantization",
                "device", "model")
        print(json.dumps({"run": str(run_dir), **{k: man.get(k) for k in keys},
                          "engine": (man.get("engine") or {}).get("name")}, indent=1))
    else:
        print(str(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
