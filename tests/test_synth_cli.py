"""Fast tier: the ``python -m synth`` command line (argument errors never load a model)."""
from __future__ import annotations

import subprocess
import sys

from synth.cli import main


def test_help_explains_the_verbs():
    out = subprocess.run([sys.executable, "-m", "synth", "generate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("--strategy", "paraphrase", "doc-qa", "--seed-filter", "--api-key-env", "--concurrency", "synth-log.jsonl"):
        assert word in out.stdout


def test_bad_arguments_are_clear_errors(workspace, capsys):
    assert main(["generate", "--strategy", "paraphrase", "--n", "0", "--workspace", str(workspace)]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert main(["generate", "--strategy", "paraphrase", "--n", "3", "--seed-filter", "split=heldout",
                 "--workspace", str(workspace)]) == 2
    assert "train split" in capsys.readouterr().err
    cfg = workspace / "bad.toml"
    cfg.write_text("no_such_key = 1\n")
    assert main(["generate", "--strategy", "paraphrase", "--n", "3", "--config", str(cfg), "--workspace", str(workspace)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "no_such_key" in err
