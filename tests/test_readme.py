"""The README's Python snippet runs as written (the README must stay true)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_engine_snippet_trains_one_step_per_embedded_task(capsys) -> None:
    text = README.read_text()
    match = re.search(r"### The engine from Python\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its engine snippet"
    exec(compile(match.group(1), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["synthetic-images", "synthetic-stories"]
    for line in lines:
        loss, grad_norm = map(float, line.split()[1:])
        assert 0 < loss < 10 and 0 < grad_norm <= 1.0 + 1e-6
