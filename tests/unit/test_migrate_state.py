"""`stream-lstm migrate-state` without Redis: which names are old-layout records, the new names
they get, the SCAN pattern, and the flag errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.cli import build_parser, main
from stream_lstm.commands.migrate_state import new_name, old_record, scan_pattern, where_state_is
from stream_lstm.stores.record import Layout
from stream_lstm.stores.redis import TAGS, RedisStateStore, bucket_of

NS = "slstm:g1"
V = "0123456789ab"


@pytest.mark.parametrize(
    "key",
    ["sensor-1", "a:b:c", "with{brace}", "ends}", "{both}", "s12}:x", "ü-ß", "", "x" * 300],
)
def test_old_record_names_are_recognised_with_their_version_and_key(key: str) -> None:
    assert old_record(f"{NS}:{V}:{{{key}}}", NS) == (V, key)


def test_new_layout_names_are_not_old_records() -> None:
    store = RedisStateStore("redis://127.0.0.1:1/0", NS, Layout(V, 1, 4, 3, 2))  # no connection
    for key in ["sensor-1", "a:b", "ends}", "{both}", "s7}", ""]:
        name = store.record_key(key)
        assert name == new_name(NS, V, key)
        assert old_record(name, NS) is None, name


def test_markers_versions_and_other_names_are_not_old_records() -> None:
    for name in [
        f"{NS}:epoch",  # the old marker
        *(f"{NS}:epoch:{TAGS[b]}" for b in (0, 17, 1023)),  # the new markers
        f"{NS}:versions",
        f"{NS}:{V}",
        f"{NS}:{V}:",
        f"{NS}:{V}:{{",
        f"{NS}:{V}:plain",
        f"{NS}:{V}:{{open",
        f"{NS}::{{k}}",  # no version
        f"slstm:other:{V}:{{k}}",  # another namespace
        f"{NS}x:{V}:{{k}}",
        f"{V}:{{k}}",
    ]:
        assert old_record(name, NS) is None, name


def test_a_nested_namespace_is_not_taken_for_a_version() -> None:
    """``slstm:g1:sub`` lies under ``slstm:g1:*``: its records are not the outer one's."""
    assert old_record(f"{NS}:sub:{V}:{{k}}", NS) is None
    assert old_record(f"{NS}:sub:{V}:{{k}}", f"{NS}:sub") == (V, "k")


def test_a_key_that_only_looks_like_a_bucket_tag_is_old() -> None:
    """``{s<digits>}:<key>}`` is new only when the digits are the key's bucket."""
    key = "k}"
    wrong = (bucket_of(key) + 1) % 1024
    assert old_record(f"{NS}:{V}:{{s{wrong}}}:{key}", NS) == (V, f"s{wrong}}}:k")
    assert old_record(f"{NS}:{V}:{{s99999}}:{key}", NS) == (V, "s99999}:k")


def test_new_name_puts_the_key_in_its_bucket() -> None:
    assert new_name(NS, V, "sensor-1") == f"{NS}:{V}:{{s{bucket_of('sensor-1')}}}:sensor-1"


def test_scan_pattern_escapes_glob_characters() -> None:
    assert scan_pattern("slstm:g1") == "slstm:g1:*"
    assert scan_pattern("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\:*"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REDIS", "NAMESPACE", "GROUP"):
        monkeypatch.delenv(f"STREAM_LSTM_{var}", raising=False)


def test_namespace_and_group_together_exit_2(
    no_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["migrate-state", "--namespace", "a", "--group", "b"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--namespace", ""], "--namespace must not be empty"),
        (["--group", ""], "--group must not be empty"),
        (["--namespace", "ns{x}"], "braces are reserved"),
        (["--redis", "redis://h:notaport/0"], "not a Redis URL"),
    ],
)
def test_bad_flags_exit_2_before_any_connection(
    no_env: None, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate-state", "--redis", "redis://127.0.0.1:1/0", *argv]) == 2
    assert says in capsys.readouterr().err


def test_an_unreachable_redis_exits_1_and_says_where(
    no_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAM_LSTM_REDIS", "redis://:secret@127.0.0.1:1/0")  # the worker's
    assert main(["migrate-state", "--dry-run", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in err
    assert "secret" not in err


def test_redis_and_namespace_come_from_flags_env_toml_and_the_workers_defaults(
    no_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def where(*argv: str) -> tuple[str, str]:
        return where_state_is(build_parser().parse_args(["migrate-state", *argv]))

    assert where() == ("redis://127.0.0.1:6379/0", "slstm:stream-lstm")  # the worker's defaults
    toml = tmp_path / "w.toml"
    toml.write_text(  # the worker's config file: its other settings are ignored here
        '[worker]\nredis = "redis://toml:1/2"\ngroup = "g-toml"\nmodel = "m"\nmax_batch = 64\n'
    )
    assert where("--config", str(toml)) == ("redis://toml:1/2", "slstm:g-toml")
    monkeypatch.setenv("STREAM_LSTM_REDIS", "redis://env:1/3")
    monkeypatch.setenv("STREAM_LSTM_NAMESPACE", "ns-env")
    assert where("--config", str(toml)) == ("redis://env:1/3", "ns-env")
    assert where("--redis", "redis://flag:1/4", "--group", "g") == ("redis://flag:1/4", "slstm:g")
    assert where("--namespace", "ns") == ("redis://env:1/3", "ns")
