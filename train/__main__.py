"""``python -m train --snapshot NAME`` — fine-tune a (Q)LoRA adapter on an approved snapshot.

``python -m train export --run RUN_DIR --format merged|gguf|ollama`` exports a run for serving.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import field_help, load


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Fine-tune a LoRA adapter (4-bit NF4 QLoRA on CUDA, fp32 LoRA on CPU) on the train split of a "
                    "verified, approved snapshot; loss on assistant tokens only. Writes a run folder with the adapter, "
                    "tokenizer + chat template, manifest.json, metrics.jsonl and loss.png.\n\n"
                    "Config precedence: defaults < --config FILE.toml < --key value flags.\n"
                    "Export a finished run: python -m train export --run RUN_DIR --format merged|gguf|ollama",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--snapshot", help="snapshot name in the workspace (python -m curate snapshot list)")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder (default: $WORKBENCH_HOME or data/workspace)")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file whose top-level keys are config fields")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint (same steps in the end)")
    g = p.add_argument_group("training config (every field; --key value or --key-name value)")
    for name, default, help_ in field_help():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        g.add_argument(*flags, dest=f"cfg_{name}", default=None, metavar="V", help=f"{help_} (default: {default!r})")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from .export import main as export_main

        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
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
    print(str(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
