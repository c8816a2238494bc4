"""Reading the harness's TOML files (scenarios, benches) with one kind of error message."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """The parsed file; a missing or malformed one raises `error` naming the file and the problem."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as problem:
        raise error("cannot read the %s %s: %s" % (what, path, problem.strerror)) from None
    except tomllib.TOMLDecodeError as problem:
        raise error("the %s %s is not valid TOML: %s" % (what, path, problem)) from None
