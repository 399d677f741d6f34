"""The one way a benchmark writes its results: its own section of docs/PERFORMANCE.md, replaced whole."""
from __future__ import annotations

import re
import shlex
import sys
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


def add_no_write(parser) -> None:
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/PERFORMANCE.md alone")


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran a benchmark, as its section quotes it: python bench/<script> <its arguments>."""
    arguments = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{Path(script).name}"] + ([shlex.join(arguments)] if arguments else []))
