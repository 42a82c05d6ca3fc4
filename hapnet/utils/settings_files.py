"""Settings files: `--config FILE` of `hapnet train`, `reproduce`, `embed` and `tune`.

TOML (`.toml`), YAML (`.yaml`/`.yml`) or JSON (`.json`, e.g. a run folder's config.json as it
is). A file holds one table of settings, named as the library's keywords (`lr = 0.5`,
`aux_levels = [1, 2]`); options given on the command line override it. Relative paths in the
file (`data`, `ontology`) are relative to the file's folder, so a settings file can sit beside
its data.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from hapnet.errors import InputError, error_summary
from hapnet.utils.textio import read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FORMATS = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
PATH_SETTINGS = ("data", "ontology")  # resolved against the file's folder when they exist there


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings table of a TOML, YAML or JSON file (by its suffix); one-line `InputError`s
    with the line where the parser gives one."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            path, f"settings files are {', '.join(sorted(FORMATS))}; got {path.suffix or 'none'}"
        )
    text = read_text(path)
    try:
        if kind == "TOML":
            value = tomllib.loads(text)
        elif kind == "YAML":
            value = yaml.safe_load(text)  # safe: plain data only, never objects
        else:
            value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise InputError(path, f"not valid YAML ({exc.problem})", line=line) from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, f"not valid {kind} ({error_summary(exc)})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(path, f"expected a table of settings, got a {type(value).__name__}")
    return {str(key).replace("-", "_"): _resolve(path, str(key), item) for key, item in value.items()}


def _resolve(path: Path, key: str, value: Any) -> Any:
    if key in PATH_SETTINGS and isinstance(value, str) and not Path(value).is_absolute():
        beside = path.parent / value
        if beside.exists():
            return str(beside.resolve())
    return value


def check_known(
    path: str | Path, settings: dict[str, Any], known: Iterable[str], ignored: Iterable[str] = ()
):
    """`settings` without the `ignored` keys (records a saved run also holds: versions,
    fingerprints); a key that is neither known nor ignored is refused, naming the closest."""
    known, ignored = set(known), set(ignored)
    for key in settings:
        if key not in known and key not in ignored:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(path, f"unknown setting {key!r}{hint}")
    return {key: value for key, value in settings.items() if key in known}
