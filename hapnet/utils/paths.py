"""Output locations, checked before any long work: a run, a figure or an embeddings file that
cannot be written is refused in one line at the start, not after an hour of training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from hapnet.errors import HapnetError, InputError

OUTPUT_KINDS = ("file", "folder")


def _exists(path: Path) -> bool:
    """Something is there: a file, a folder, or a link (even a broken one, which writing would hit)."""
    return path.exists() or path.is_symlink()


def check_output_location(
    path: str | Path, *, force: bool = False, kind: Literal["file", "folder"] = "file"
) -> Path:
    """Refuse, as `InputError`, an output `path` that cannot or must not be written:

    - a folder on its way that is a file (`-o notes.txt/out.parquet`);
    - a nearest existing folder the user may not write in (missing folders are created later);
    - `path` itself of the other kind (a folder where a file is written, or the reverse), even
      with `force`: --force replaces an earlier output, never something else;
    - an existing `path`, unless `force`.

    Returns `path` as a `Path`. Nothing is created.
    """
    if kind not in OUTPUT_KINDS:
        raise HapnetError(f"kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    path = Path(path)
    if path.name in ("", ".."):  # `.`, `..`, `/`: a folder that is never an output to replace
        raise InputError(path, "not a file or folder name for an output")
    if _exists(path):
        if kind == "file" and path.is_dir():
            raise InputError(path, "is a folder, expected a file name")
        if kind == "folder" and not path.is_dir():
            raise InputError(path, "is a file, not a folder")
        if not force:
            raise InputError(path, "already exists (use --force to overwrite)")
    for parent in path.absolute().parents:
        if parent.is_dir():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(path, f"cannot write in {_shown(parent, path)} (permission denied)")
            break
        if _exists(parent):
            raise InputError(path, f"{_shown(parent, path)} is a file, not a folder")
    return path


def first_missing(path: str | Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet: what creating `path` creates, and
    what a failed command removes again (None when `path` exists)."""
    missing = None
    for folder in (Path(path), *Path(path).parents):
        if _exists(folder):
            break
        missing = folder
    return missing


def _shown(parent: Path, path: Path) -> str:
    """`parent` as the user wrote it: relative when `path` was given relative."""
    if path.is_absolute():
        return str(parent)
    try:
        return str(parent.relative_to(Path.cwd()))
    except ValueError:
        return str(parent)
