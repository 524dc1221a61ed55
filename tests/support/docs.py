"""The examples in README and the documentation site, for the tests that run them: each fenced block with
the marker line above it (``<!-- run by PATH -->`` or ``<!-- not run: WHY -->``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"^(?P<marker>[^\n]*)\n```(?P<language>[a-z]+)\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)


def examples(page: Path) -> list[tuple[str, str, str]]:
    """Each fenced example of ``page``: its language, the marker line above it and its code."""
    return [(m["language"], m["marker"], m["code"]) for m in _BLOCK.finditer(page.read_text(encoding="utf-8"))]


def example(page: str, language: str, marker: str = "run by tests/test_docs.py") -> list[str]:
    """The code of ``page``'s ``language`` examples that say they are run by ``marker``'s runner."""
    return [code for lang, above, code in examples(ROOT / page) if lang == language and marker in above]
