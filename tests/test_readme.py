"""The README's commands are what CI runs, and say how torch is chosen (issue 17 item 13)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    return re.findall(r"```console\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readmes_test_command_verbatim():
    tests = [c for c in _commands() if "pytest" in c]
    assert len(tests) == 1
    assert tests[0] in (ROOT / ".ci" / "run").read_text().splitlines()
    assert "-m ''" in tests[0]  # the slow tests too


def test_install_commands_pick_the_torch_build_they_say():
    installs = [c for c in _commands() if "pip install" in c]
    cpu = [c for c in installs if "--cuda" not in c]
    gpu = [c for c in installs if "--cuda" in c]
    assert cpu and gpu
    for c in installs:
        assert "-c constraints.txt" in c
    for c in cpu:
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in c
    for c in gpu:
        assert "download.pytorch.org/whl/cpu" not in c
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins == ["torch==2.13.0"]
