"""Output shared by the commands: paths checked before the work that fills them (not after an
evaluation has run), and the ``--json`` output of the commands that print tables."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

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


# -- --json ----------------------------------------------------------------------------------

JSON_HELP = (
    "print JSON for scripts instead of the table: nothing else goes to stdout (notes, logs and "
    "warnings go to stderr); the shape is below"
)


def write_json(obj: Any) -> None:
    """``obj`` as one line of JSON on stdout (orjson: full-precision floats, NaN/inf as null,
    numpy scalars and arrays as numbers), flushed at once: one ``--json`` document, or one row
    of JSON Lines. Raises BrokenPipeError when the reader has gone (see
    :func:`stdout_closed`)."""
    import orjson

    data = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    if buf is None:  # a text-only stream (e.g. replaced by a test): UTF-8 text then
        out.write(data.decode() + "\n")
    else:
        out.flush()  # anything written as text before stays in front
        buf.write(data + b"\n")
        buf.flush()
    out.flush()


def stdout_closed() -> None:
    """After a BrokenPipeError on stdout (``stream-lstm tail --json | head -3``): point stdout
    at /dev/null so that the interpreter's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test's capture)
        pass
    finally:
        os.close(devnull)
