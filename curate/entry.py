"""``workbench`` — one command for the whole workbench (the ``python -m`` forms still work).

  workbench curate …     = python -m curate …     ingest (files, Parquet/Arrow, datasets folders, hf://),
                                                  dedup, leakage, review, snapshot (create/export/…), stats
  workbench synth …      = python -m synth …      synthetic examples with reward filtering
  workbench train …      = python -m train …      fine-tune a (Q)LoRA adapter on a snapshot; export a run
  workbench evaluate …   = python -m evaluate …   tuned vs base on the held-out split; compare runs
  workbench app          = streamlit run app.py   the labelers' review app (--workspace sets WORKBENCH_HOME)

Flags take either spelling in every verb: ``--batch-size`` or ``--batch_size`` (:func:`flag_spellings`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VERBS = {  # verb: (module, help)
    "curate": ("curate.cli", "ingest, dedup, leakage, review, snapshot (create/export/…), stats"),
    "synth": ("synth.cli", "synthetic examples with reward filtering (OpenAI-compatible servers or the embedded model)"),
    "train": ("train.__main__", "fine-tune a (Q)LoRA adapter on an approved snapshot; export a run for serving"),
    "evaluate": ("evaluate.__main__", "tuned vs base model on the held-out split (+ eval files); compare runs"),
    "app": (None, "the labelers' review app: streamlit run app.py (--workspace DIR sets WORKBENCH_HOME)"),
}
APP = Path(__file__).resolve().parent.parent / "app.py"


# -- one flag style ---------------------------------------------------------------------------------------
def _respell(args: list[str], known: dict) -> list[str]:
    """``--a_b`` → ``--a-b`` (or the reverse) where only the other spelling is an option of this parser."""
    out = []
    for i, a in enumerate(args):
        if a == "--":
            return out + args[i:]
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a.partition("=")
            if name not in known:
                alt = name[:2] + (name[2:].replace("_", "-") if "_" in name else name[2:].replace("-", "_"))
                if alt in known:
                    a = alt + eq + val
        out.append(a)
    return out


@contextmanager
def flag_spellings() -> Iterator[None]:
    """While active, every ``argparse`` parser (a verb's, each of its sub-commands') accepts ``--x_y`` for its
    ``--x-y`` option and the reverse. Done at parse time, per parser, so ``--help`` and abbreviations are as
    before and a parser that defines both spellings keeps both."""
    orig = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return orig(self, _respell(args, self._option_string_actions), namespace)

    argparse.ArgumentParser.parse_known_args = parse_known_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = orig


# -- the command ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="One command for the whole workbench: "
                                "workbench VERB … runs python -m VERB … (app: streamlit run app.py).",
                                epilog="Every verb has --help (workbench curate ingest --help). Flags take either "
                                       "spelling: --batch-size or --batch_size.")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return p


def app_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench app", description="Run the labelers' review app: "
                                f"`{sys.executable} -m streamlit run {APP} [STREAMLIT_OPTION …]`. Any other option "
                                "(e.g. --server.port 8502) goes to streamlit.")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder, passed as WORKBENCH_HOME "
                   "(default: $WORKBENCH_HOME, else data/workspace)")
    args, rest = p.parse_known_args(argv)
    if not APP.exists():
        print(f"error: {APP} not found: the app runs from a source checkout (pip install -e .)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.workspace:
        env["WORKBENCH_HOME"] = str(Path(args.workspace).resolve())
    try:
        return subprocess.call([sys.executable, "-m", "streamlit", "run", str(APP), *rest], env=env)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        build_parser().parse_args(argv[:1])  # --help, or an error naming the verbs
        return 2
    verb, rest = argv[0], argv[1:]
    with flag_spellings():
        if verb == "app":
            return app_main(rest)
        rc = importlib.import_module(VERBS[verb][0]).main(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
