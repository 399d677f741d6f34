"""The one way a benchmark writes its results: its own section of docs/PERFORMANCE.md, replaced whole."""
from __future__ import annotations

import re
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"


def write_section(text: str) -> None:
    """Replace the section headed by text's first line ("## ...") with text, or append it; every other section
    stays as it is. Written to a temporary file and renamed, so a killed benchmark leaves the old file."""
    heading = text.splitlines()[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, not {heading!r}")
    current = REPORT.read_text() if REPORT.exists() else "# Performance\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip() + "\n"
    if pattern.search(current):
        updated = pattern.sub(lambda _: body + "\n", current, count=1)
    else:
        updated = current.rstrip() + "\n\n" + body
    temporary = REPORT.with_suffix(".md.tmp")
    temporary.write_text(updated.rstrip() + "\n")
    temporary.replace(REPORT)
    print(f"\nWrote the '{heading[3:]}' section of {REPORT.relative_to(REPORT.parent.parent)}")
