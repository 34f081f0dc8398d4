"""Artifacts that cannot be read or written: every command says what to check and exits 2, never
with a traceback; every artifact file gets the same mode, so a worker that runs as another user
than the trainer (uid 10001 in the image) can read them all.

Permission checks must run where permissions apply: in this process when it is not root, and as
root (chmod stops nothing for root) in a child process that first drops to uid/gid 65534. Each
such check first shows that the intact artifact *is* readable there, so a refusal comes from the
chmod and not from the set-up. The refusals that root meets too (a directory, FIFO or broken
link where a file belongs) are tested in this process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import torch

import stream_lstm.training.train
from stream_lstm.cli import main
from stream_lstm.config import WorkerSettings
from stream_lstm.drivers.assembly import EngineParts
from stream_lstm.errors import ConfigError, ModelError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import (
    FILES,
    check_output_dir,
    content_version,
    load_artifact,
    save_artifact,
)

NOBODY = 65534
ROOT = os.geteuid() == 0
ARTIFACT_FILES = (*FILES, "VERSION")


def _import_all(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(BaseException):
            importlib.import_module(name)


def _run_as_nobody(fn: Callable[..., Any], args: tuple[Any, ...], modules: list[str],
                   conn: Connection) -> None:  # fmt: skip
    """In the child: import as root what the test process had imported (the interpreter's
    own files can be private to root), drop to uid/gid 65534, run ``fn(*args)``."""
    try:
        _import_all(modules)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            out: dict[str, Any] = {"value": fn(*args)}
        except Exception as e:
            out = {"error": type(e).__name__, "message": str(e)}
    except BaseException as e:  # could not drop privileges, or fn escaped
        out = {"error": "child", "message": repr(e)}
    conn.send(out)
    conn.close()


def as_other_user(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` where file permissions apply: ``{"value": …}`` or ``{"error": type name,
    "message": …}``. As root, in a child process running as uid/gid 65534: started by
    multiprocessing's fork server, a fresh single-threaded interpreter, never by forking this
    process (whose other threads, from earlier tests, can leave a forked child dead or stuck).
    ``fn`` must be a module-level function. The child first imports (still as root) every
    module this process has, so each test runs the same code path here first."""
    if not ROOT:
        try:
            return {"value": fn(*args)}
        except Exception as e:
            return {"error": type(e).__name__, "message": str(e)}
    ctx = multiprocessing.get_context("forkserver")
    modules = sorted(m for m in sys.modules if not m.startswith("__"))
    ctx.set_forkserver_preload([__name__, *modules])  # read when the server starts: once
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_run_as_nobody, args=(fn, args, modules, send), daemon=True)
    p.start()
    send.close()
    try:
        if not recv.poll(120):
            p.kill()
            pytest.fail("the unprivileged child gave no answer within 120 s")
        res: dict[str, Any] = recv.recv()
    except EOFError:
        p.join(30)
        pytest.fail(f"the unprivileged child died without an answer (exit code {p.exitcode})")
    finally:
        recv.close()
        p.join(30)
    if res.get("error") == "child":
        pytest.fail(f"running as uid {NOBODY} to check file permissions failed: {res['message']}")
    return res


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``stream-lstm ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp_path is private to its user)."""
    d = Path(tempfile.mkdtemp(prefix="stream-lstm-access-"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    dst.chmod(0o755)  # the trainer's directory mode; only the files' modes are under test
    return dst


def readable(model: Path) -> str:
    """The control: the intact artifact reads as that user (files and VERSION)."""
    return content_version(model) + (model / "VERSION").read_text().strip()


def loads(model: Path) -> str:
    load_artifact(model)
    return "loaded"


def reload_poll(model: Path) -> tuple[bool, float]:
    """A hot reload of the worker to ``model``: (switched, failures counted)."""
    current = types.SimpleNamespace(forecaster=types.SimpleNamespace(version="000000000000"))
    parts = EngineParts(torch.device("cpu"), None, None, current)  # type: ignore[arg-type]
    metrics = WorkerMetrics()
    switched = parts.maybe_reload(WorkerSettings(model=model), metrics, lambda o: None)
    return switched, metrics.model_reload_failures._value.get()


def exit_code(argv: list[str]) -> int:
    return cli(argv)[0]


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- one file mode ---------------------------------------------------------------------------


def test_every_artifact_file_has_the_same_mode_and_another_user_can_read_them(
    tiny_model: Path, tmp_path: Path, shared: Path
) -> None:
    mask = umask()
    files = [p for p in tiny_model.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {*ARTIFACT_FILES, "metrics.json", "loss_curves.png"}
    assert not [p for p in files if p.name.startswith(".")], "temporary files left behind"
    modes = {p.relative_to(tiny_model).as_posix(): p.stat().st_mode & 0o777 for p in files}
    assert set(modes.values()) == {0o666 & ~mask}, modes  # safetensors' own writer made 0600
    if mask == 0o022:
        assert modes["model.safetensors"] == 0o644
    # a file replaced by a new save gets the new mode, whatever the old one's was
    a = load_artifact(tiny_model)
    out = tmp_path / "again"
    save_artifact(out, a.config, a.module, a.scaler)
    (out / "model.safetensors").chmod(0o600)
    assert save_artifact(out, a.config, a.module, a.scaler) == a.version
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    # and the user a worker runs as (not the trainer) reads every file: only when 0o004 is set
    if mask & 0o004 == 0:
        model = copy_model(tiny_model, shared / "m")
        assert as_other_user(readable, model) == {"value": a.version * 2}


# -- unreadable files and directories ----------------------------------------------------------


@pytest.mark.parametrize("target", ["", *ARTIFACT_FILES])
def test_an_unreadable_artifact_is_a_model_error_that_names_the_path(
    target: str, tiny_model: Path, shared: Path
) -> None:
    model = copy_model(tiny_model, shared / "m")
    assert "value" in as_other_user(readable, model)  # the control
    path = model / target if target else model
    path.chmod(0)
    res = as_other_user(loads, model)
    assert res["error"] == "ModelError", res
    # a file names itself; a directory that cannot be searched names the directory
    assert res["message"].startswith(f"cannot read {path}: permission denied"), res
    assert "check their owner and mode" in res["message"]


def test_files_of_the_wrong_kind_are_refused_without_opening_them(
    tiny_model: Path, tmp_path: Path
) -> None:
    bad = shutil.copytree(tiny_model, tmp_path / "dir")
    (bad / "config.json").unlink()
    (bad / "config.json").mkdir()
    with pytest.raises(ModelError, match=r"not a stream-lstm artifact: config.json is a directory"):
        load_artifact(bad)

    fifo = shutil.copytree(tiny_model, tmp_path / "fifo")
    (fifo / "model.safetensors").unlink()
    os.mkfifo(fifo / "model.safetensors")
    caught: list[BaseException] = []

    def load() -> None:
        try:
            load_artifact(fifo)
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=load, daemon=True)  # opening a FIFO would block forever
    t.start()
    t.join(30)
    assert not t.is_alive(), "load_artifact opened a FIFO"
    assert isinstance(caught[0], ModelError)
    assert "model.safetensors is not a regular file" in str(caught[0])

    link = shutil.copytree(tiny_model, tmp_path / "link")
    (link / "scaler.json").unlink()
    (link / "scaler.json").symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(ModelError, match=r"missing \['scaler.json \(a broken symbolic link\)'\]"):
        load_artifact(link)

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ModelError, match="a-file is not a directory: give the artifact directory"):
        load_artifact(tmp_path / "a-file")


@pytest.mark.parametrize("command", ["predict", "evaluate", "worker"])
def test_commands_print_an_error_and_exit_2_for_an_unreadable_model(
    command: str, tiny_model: Path, synth_csv: Path, tmp_path: Path, shared: Path
) -> None:
    def argv(model: Path) -> list[str]:
        if command == "worker":
            return ["worker", "--model", str(model), "--metrics-port", "-1"]
        rest = ["--out", str(tmp_path / "p.csv")] if command == "predict" else []
        return [command, "--model", str(model), "--data", str(synth_csv), *rest]

    # root too: a directory where the weights belong
    odd = shutil.copytree(tiny_model, tmp_path / "odd")
    (odd / "model.safetensors").unlink()
    (odd / "model.safetensors").mkdir()
    threads = torch.get_num_threads()  # the worker sets its own
    try:
        rc, _, err = cli(argv(odd))
    finally:
        torch.set_num_threads(threads)
    assert rc == 2, err
    assert err.startswith(f"error: {odd} is not a stream-lstm artifact: model.safetensors is a d")
    assert "Traceback" not in err

    # weights the user running the command cannot read
    model = copy_model(tiny_model, shared / "m")
    assert "value" in as_other_user(readable, model)
    (model / "model.safetensors").chmod(0)
    res = as_other_user(cli, argv(model))
    rc, _, err = res["value"]
    assert rc == 2, err
    assert err.startswith(f"error: cannot read {model}/model.safetensors: permission denied"), err
    assert "Traceback" not in err


def test_a_hot_reload_to_an_unreadable_model_is_refused_and_the_worker_keeps_running(
    tiny_model: Path, shared: Path
) -> None:
    model = copy_model(tiny_model, shared / "m")
    assert "value" in as_other_user(readable, model)
    (model / "model.safetensors").chmod(0)
    reload_poll(shared / "nowhere")  # here first: see as_other_user
    assert as_other_user(reload_poll, model) == {"value": (False, 1.0)}  # logged, no exception


# -- stream-lstm models ------------------------------------------------------------------------


def test_models_lists_an_unreadable_artifact_with_the_reason_and_exits_2(
    tiny_model: Path, shared: Path
) -> None:
    folder = shared / "models"
    folder.mkdir(mode=0o755)
    copy_model(tiny_model, folder / "a")
    copy_model(tiny_model, folder / "b")
    version = load_artifact(tiny_model).version
    assert cli(["models", "--json", str(folder)])[0] == 0  # here first: see as_other_user
    assert as_other_user(exit_code, ["models", "--json", str(folder)]) == {"value": 0}

    (folder / "b").chmod(0)
    rc, out, err = as_other_user(cli, ["models", "--json", str(folder)])["value"]
    assert rc == 2
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert rows["a"]["version"] == version
    assert rows["b"]["error"].startswith(f"cannot read {folder / 'b'}"), rows["b"]
    assert err.startswith("error: 1 of 2 artifacts could not be read:")

    folder.chmod(0)
    rc, out, err = as_other_user(cli, ["models", str(folder)])["value"]
    assert rc == 2
    assert err.startswith(f"error: cannot read {folder}: permission denied"), err


# -- train --out -----------------------------------------------------------------------------

TRAIN = ["train", "--time-col", "ts", "--features", "f0", "--targets", "f0", "--no-progress"]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the data is the first step of training: it must not be reached."""

    def prepare(*args: object, **kw: object) -> None:
        raise AssertionError("the data was read before --out was checked")

    monkeypatch.setattr(stream_lstm.training.train, "prepare", prepare)


def test_train_refuses_an_out_it_cannot_write_before_reading_any_data(
    synth_csv: Path, tmp_path: Path, shared: Path, no_training: None
) -> None:
    data = ["--data", str(synth_csv)]
    (tmp_path / "file").write_text("x")
    artifact_with_a_dir = tmp_path / "old"
    (artifact_with_a_dir / "VERSION").mkdir(parents=True)
    cases = {
        tmp_path / "file": "it is a file, not a directory",
        tmp_path / "file" / "m": f"{tmp_path / 'file'} is a file, not a directory",
        artifact_with_a_dir: f"{artifact_with_a_dir / 'VERSION'} is a directory where",
    }
    for out, reason in cases.items():
        rc, _, err = cli([*TRAIN, *data, "--out", str(out)])
        assert rc == 2, err
        assert err.startswith(f"error: cannot write the model artifact to {out}: {reason}"), err
        assert "give --out a directory" in err

    # a parent the user cannot write: the control (a writable one) passes the same check
    ro = shared / "ro"
    ro.mkdir(mode=0o755)
    (shared / "rw").mkdir()
    (shared / "rw").chmod(0o777)
    assert as_other_user(check_output_dir, shared / "rw" / "m") == {"value": None}
    res = as_other_user(cli, [*TRAIN, *data, "--out", str(ro / "m")])
    rc, _, err = res["value"]
    assert rc == 2, err
    assert err.startswith(f"error: cannot write the model artifact to {ro / 'm'}: {ro} is not "
                          "writable (Permission denied)"), err  # fmt: skip
    assert not (ro / "m").exists()
    locked = shared / "locked"  # an existing --out that cannot even be looked into
    locked.mkdir()
    locked.chmod(0)
    rc, _, err = as_other_user(cli, [*TRAIN, *data, "--out", str(locked)])["value"]
    assert rc == 2, err
    assert err.startswith(f"error: cannot write the model artifact to {locked}: {locked}/"), err
    assert "cannot be looked up (Permission denied)" in err


def test_the_out_check_creates_nothing_and_accepts_what_training_can_write(
    tiny_model: Path, tmp_path: Path
) -> None:
    new = tmp_path / "a" / "b" / "c"
    check_output_dir(new)
    assert not (tmp_path / "a").exists()
    check_output_dir(tiny_model)  # an existing artifact is overwritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is a broken symbolic link"):
        check_output_dir(broken)
