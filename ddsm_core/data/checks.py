"""Row checks shared by the importers: each returns None or a short reason."""
from __future__ import annotations

import os
from pathlib import Path

from ..tasks import SOURCE_LABELS


def parse_label(value) -> tuple[int | None, str | None]:
    """An integer 0-4, accepting '3' and 3.0 but not '3.5', 'x' or 7."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None, f"label {value!r} is not an integer 0-4"
    if not number.is_integer() or int(number) not in SOURCE_LABELS:
        return None, f"label {value!r} is not an integer 0-4"
    return int(number), None


def resolve_inside(folder: Path, filename: str) -> tuple[Path | None, str | None]:
    """The file's path, refused when it would leave the image folder."""
    if not isinstance(filename, str) or not filename.strip():
        return None, "empty filename"
    relative = Path(filename)
    if relative.is_absolute() or ".." in relative.parts:
        return None, "path leaves the image folder (absolute paths and '..' are not allowed)"
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        return None, "path leaves the image folder (through a link)"
    if path.is_dir():
        return None, "is a folder, not an image file"
    if not path.is_file():
        return None, "file not found"
    if not os.access(path, os.R_OK):
        return None, "file is not readable"
    return path, None
