"""Output paths checked before the work that fills them (not after an evaluation has run)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stream_lstm.errors import ConfigError


def check_output_file(path: Path, flag: str) -> None:
    """``path`` can be written by this process: it is not a directory, and its nearest existing
    parent is a directory this user can write (missing parents are created later). Creates
    nothing; raises a ConfigError (exit 2) that names ``flag`` otherwise."""

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"cannot write {flag} {path}: {reason}")

    if path.is_dir():
        raise fail("it is a directory; give a file name")
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            raise fail("no parent directory exists")
        parent = parent.parent
    if not parent.is_dir():
        raise fail(f"{parent} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".stream-lstm-write-check-"):
            pass
    except OSError as e:
        raise fail(
            f"{parent} is not writable by this user (uid {os.geteuid()}): {e.strerror or e}"
        ) from None
