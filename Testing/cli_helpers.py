"""Running the real command line in a subprocess and checking the one-sentence error contract."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsegrwkv", *args], capture_output=True, text=True, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, the last stderr line one `error:` sentence naming each of `words`."""
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("error: "), result.stderr
    for word in words:
        assert word.lower() in lines[-1].lower(), lines[-1]
