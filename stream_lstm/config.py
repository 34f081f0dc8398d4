"""Typed, frozen settings: flags > environment (``STREAM_LSTM_…``) > TOML file > defaults.

Each command has one settings class. The CLI passes only the flags a user actually gave, so an
environment variable or a TOML value is never shadowed by an argparse default. Every command that
talks to Kafka reads the connection through :class:`KafkaSettings` (the worker's own settings
extend it), so ``STREAM_LSTM_BOOTSTRAP``, ``STREAM_LSTM_KAFKA_OPTIONS`` and the ``[worker]`` table
of one config file serve the worker and the tools alike. Secrets are ``SecretStr`` or left out of
``repr``; what is shown goes through :mod:`stream_lstm.redact`.
"""

from __future__ import annotations

import os
import socket
import tomllib
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from stream_lstm.errors import ConfigError
from stream_lstm.redact import MASK, is_secret_kafka_key, redact_kafka, redact_url

if TYPE_CHECKING:
    from stream_lstm.runtime.scoring import ScoringConfig

# The TOML document given with --config, for the duration of one settings build.
_TOML: ContextVar[dict[str, Any]] = ContextVar("stream_lstm_toml", default={})  # noqa: B039

S = TypeVar("S", bound="Settings")
Port = Annotated[int, Field(ge=1, le=65535)]


def _split_csv(v: Any) -> Any:
    """``"a, b"`` → ``["a", "b"]`` (flags and environment variables); lists pass through."""
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    return v


CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]
CsvFloats = Annotated[list[float], NoDecode, BeforeValidator(_split_csv)]


def opt(
    default: Any = ...,
    help: str = "",
    *,
    flag: str | None = None,
    group: str = "",
    shown: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
    factory: Any = None,
    hidden: bool = False,
) -> Any:
    """A setting, described once: its help (``--help`` and the README's table, where backticks
    mark code), its flag when that is not ``--<field-name>``, the ``--help`` group, the default
    as shown when the value itself would mislead, and ``cli=False`` for a setting without a flag
    (environment and TOML only). ``hidden``: left out of ``repr`` (secrets)."""
    extra = {"flag": flag, "group": group, "shown": shown, "metavar": metavar, "cli": cli}
    meta: dict[str, Any] = {
        "description": help,
        "json_schema_extra": {k: v for k, v in extra.items() if v is not None},
    }
    if hidden:
        meta["repr"] = False
    if factory is not None:
        return Field(default_factory=factory, **meta)
    return Field(default, **meta)


def field_extra(cls: type[BaseSettings], name: str) -> dict[str, Any]:
    extra = cls.model_fields[name].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def flag_of(cls: type[BaseSettings], name: str) -> str:
    """The command-line flag of a setting."""
    return str(field_extra(cls, name).get("flag") or f"--{name.replace('_', '-')}")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stream-lstm"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stream-lstm"


class _TomlSection(PydanticBaseSettingsSource):
    """Values from the ``[section]`` of the TOML file (dashes in names become underscores)."""

    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        doc = _TOML.get()
        raw = doc.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config file: {section} must be a table ([{section}] with name = value lines), "
                f"not {type(raw).__name__} {raw!r}"
            )
        self._values = {k.replace("-", "_"): v for k, v in raw.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)  # unknown names reach validation and are refused there


class Settings(BaseSettings):
    """Base for every command's settings."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_")
    toml_section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        section = getattr(settings_cls, "toml_section", "")
        return (init_settings, env_settings, _TomlSection(settings_cls, section))


def load_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: give a TOML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e.reason}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _merged_maps(cls: type[Settings], given: dict[str, Any]) -> dict[str, Any]:
    """Option maps (librdkafka settings) merge key by key across the sources: the TOML table's,
    then the environment's, then the flags' (each key from the highest source that has it), so
    a secret kept in the environment adds to the TOML's other settings instead of replacing
    them. Parse errors are left for validation to report."""
    prefix = cls.model_config.get("env_prefix", "")
    section = _TOML.get().get(cls.toml_section, {}) if cls.toml_section else {}
    out: dict[str, Any] = {}
    for name, f in cls.model_fields.items():
        if typing.get_origin(f.annotation) is not dict:
            continue
        layers = [
            section.get(name) if isinstance(section, dict) else None,
            os.environ.get(f"{prefix}{name.upper()}"),
            given.get(name),
        ]
        try:
            parsed = [_kv_pairs(v) for v in layers if v is not None]
        except ValueError:
            continue
        if len(parsed) > 1 and all(isinstance(p, dict) for p in parsed):
            out[name] = {k: v for p in parsed for k, v in p.items()}
    return out


def build_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from flags (only those not None), env vars and the TOML file.

    A ValidationError becomes a ConfigError that names the flag and the environment variable.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    token = _TOML.set(load_toml(config_file))
    try:
        given |= _merged_maps(cls, given)
        return cls(**given)
    except ValidationError as e:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in e.errors():
            if not err["loc"]:  # a check across fields
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            name = str(err["loc"][0])
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(cls.model_fields))
                lines.append(f"unknown setting {name!r} (known: {known})")
                continue
            flag = flag_of(cls, name) if name in cls.model_fields else f"--{name}"
            where = f"{flag} / {prefix}{name.upper()}"
            lines.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    finally:
        _TOML.reset(token)


class StackSettings(Settings):
    """Where the local stack lives and which ports it uses."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_STACK_")
    toml_section: ClassVar[str] = "stack"

    dir: Path = default_state_dir() / "stack"
    cache_dir: Path = default_cache_dir()
    host: str = "127.0.0.1"
    kafka_port: Port = 9092
    controller_port: Port = 9093
    redis_port: Port = 6379
    kafka_heap: Annotated[str, Field(pattern=r"^[0-9]+[mMgG]$")] = "512m"
    # A Redis Cluster (3 masters + 3 replicas) besides the single Redis: nodes on BASE..BASE+5,
    # their cluster buses on BASE+10000..BASE+10005 (so BASE <= 55530).
    redis_cluster: bool = False
    redis_cluster_port: Annotated[int, Field(ge=1, le=55530)] = 7000
    # A local Schema Registry (Apicurio Registry, Confluent-compatible API, in memory)
    schema_registry: bool = False
    schema_registry_port: Port = 8081

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        ports = [self.kafka_port, self.controller_port, self.redis_port]
        names = "--kafka-port, --controller-port and --redis-port"
        if self.schema_registry:
            ports.append(self.schema_registry_port)
            names = "--kafka-port, --controller-port, --redis-port and --schema-registry-port"
        if len(set(ports)) != len(ports):
            raise ValueError(f"{names} must differ (got {ports})")
        return self

    @property
    def redis_cluster_ports(self) -> tuple[int, ...]:
        """The cluster's node ports: masters BASE..BASE+2, replicas BASE+3..BASE+5."""
        return tuple(range(self.redis_cluster_port, self.redis_cluster_port + 6))

    @model_validator(mode="after")
    def _cluster_ports_free_of_others(self) -> Self:
        if not self.redis_cluster:
            return self
        used = set(self.redis_cluster_ports) | {p + 10000 for p in self.redis_cluster_ports}
        clash = sorted(used & {self.kafka_port, self.controller_port, self.redis_port})
        if clash:
            base = self.redis_cluster_port
            raise ValueError(
                f"--redis-cluster-port {base} puts the cluster's nodes on {base}-{base + 5} and "
                f"their buses on {base + 10000}-{base + 10005}, which takes port(s) {clash} of "
                "--kafka-port, --controller-port or --redis-port: choose another base port"
            )
        return self


class DataSettings(Settings):
    """Which file to read and what its columns mean (``--dataset`` fills these in)."""

    data: Path | None = None
    dataset: str | None = None
    key_col: str | None = None
    time_col: str | None = None
    features: CsvList | None = None
    targets: CsvList | None = None


class TrainSettings(DataSettings):
    """`stream-lstm train`: flags, STREAM_LSTM_TRAIN_* variables, or a [train] TOML table. A
    default shown as "the dataset's" comes from the --dataset preset when one is given."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_TRAIN_")
    toml_section: ClassVar[str] = "train"

    out: Path = opt(help="artifact directory to write")
    model: Literal["lstm", "cnn-lstm-attn"] = opt("lstm", "model kind", group="model")
    time_step: Annotated[int, Field(ge=1)] | None = opt(
        None, "window length T; TBPTT chunk length", group="model", shown="48, or the dataset's"
    )
    horizon: Annotated[int, Field(ge=1)] | None = opt(
        None, "steps to forecast H", group="model", shown="24, or the dataset's"
    )
    hidden_size: Annotated[int, Field(ge=1)] | None = opt(
        None, "LSTM hidden size", group="model", shown="64, or the dataset's"
    )
    layers: Annotated[int, Field(ge=1)] = opt(2, "stacked LSTM layers", group="model")
    dropout: Annotated[float, Field(ge=0, lt=1)] = opt(
        0.1, "dropout between layers and before the head", group="model"
    )
    learned_init: bool = opt(False, "learn h_0, c_0 (off: zeros)", group="model")
    quantiles: CsvFloats | None = opt(
        None,
        "e.g. 0.1,0.5,0.9 for interval forecasts (needs `--loss pinball`)",
        group="model", shown="none",
    )  # fmt: skip
    conv_channels: Annotated[int, Field(ge=1)] = opt(
        32, "cnn-lstm-attn: Conv1d channels", group="model"
    )
    conv_kernel: Annotated[int, Field(ge=1)] = opt(
        3, "cnn-lstm-attn: Conv1d kernel size", group="model"
    )
    loss: Literal["mse", "mae", "pinball"] | None = opt(
        None, "training loss", group="training", shown="mse, or pinball with quantiles"
    )
    epochs: Annotated[int, Field(ge=1)] | None = opt(
        None, "maximum epochs", group="training", shown="30, or the dataset's"
    )
    batch_size: Annotated[int, Field(ge=1)] = opt(
        32, "sequences (lstm) or windows/4 (cnn-lstm-attn) per batch", group="training"
    )
    lr: Annotated[float, Field(gt=0)] = opt(
        2e-3, "Adam learning rate, halved on plateaus", group="training"
    )
    clip: Annotated[float, Field(gt=0)] = opt(1.0, "gradient norm clipping", group="training")
    patience: Annotated[int, Field(ge=1)] | None = opt(
        None, "early-stopping patience in epochs", group="training", shown="5, or the dataset's"
    )
    seed: int = opt(0, "random seed", group="training")
    search: bool = opt(
        False, "also try a doubled hidden size, the other point loss (MSE/MAE) and a doubled "
        "--time-step, and keep the best by validation MSE; every candidate's score goes to "
        "metrics.json", group="training",
    )  # fmt: skip
    search_budget: Annotated[float, Field(gt=0)] = opt(
        1800.0,
        "seconds after which no further candidate (of --norm auto or --search) starts",
        group="training",
    )
    tbptt_chunks: Annotated[int, Field(ge=1)] = opt(
        8, "lstm: chunks of T per carried-state piece", group="training"
    )
    device: str = opt(
        "auto", "`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`", group="training"
    )
    scaling: Literal["global", "per-key"] | None = opt(
        None, "standardisation statistics", group="preparation", shown="global, or the dataset's"
    )
    norm: Literal["auto", "offset", "diff", "revin", "none"] = opt(
        "auto", "normalisation that follows a level that moves: offset (lstm: the event's levels "
        "and changes in, offsets from its last value out), diff (lstm: changes only), revin "
        "(windowed: each window by its own mean and spread), none (training-span statistics "
        "only); auto trains offset or revin (by --model) and none, and keeps the better on "
        "validation", group="preparation",
    )  # fmt: skip
    log1p: CsvList | None = opt(
        None, "columns modelled as log(1+x), e.g. counts", group="preparation",
        shown="none, or the dataset's",
    )  # fmt: skip
    calendar: CsvList | None = opt(
        None, "calendar encodings: day,week,year or none", group="preparation",
        shown="by the interval, or the dataset's",
    )  # fmt: skip
    timezone: str | None = opt(
        None, "IANA zone for calendar encodings", group="preparation",
        shown="UTC, or the dataset's",
    )  # fmt: skip
    split: CsvFloats = opt(
        help="train,val,test fractions of the time span", group="preparation",
        factory=lambda: [0.7, 0.15, 0.15], shown="0.7,0.15,0.15",
    )  # fmt: skip
    split_dates: CsvList | None = opt(
        None, "VAL_START,TEST_START dates instead of fractions", group="preparation"
    )
    fill: Literal["interpolate", "ffill", "zero"] = opt(
        "interpolate", "gap fill policy", group="preparation"
    )
    max_gap: Annotated[int, Field(ge=0)] = opt(
        24, "longest gap (steps) to fill; longer ones split the series", group="preparation"
    )
    repair: bool = opt(
        True, "anomaly repair, judged against the daily and weekly pattern", group="preparation"
    )
    repair_window: Annotated[int, Field(ge=3)] = opt(
        25, "rolling median window for anomalies in series without a daily season",
        group="preparation",
    )  # fmt: skip
    repair_k: Annotated[float, Field(gt=0)] = opt(
        6.0, "flag values more than k robust standard deviations from the expected value",
        group="preparation",
    )  # fmt: skip


def _kv_pairs(v: Any) -> Any:
    """``["a=1", "b=2"]`` or ``"a=1,b=2"`` or a JSON object string → a dict of strings."""
    split = False
    if isinstance(v, str):
        v = v.strip()
        if v.startswith("{"):
            import json

            return json.loads(v)
        v, split = [p for p in v.split(",") if p.strip()], True
    if isinstance(v, list):
        out = {}
        for i, item in enumerate(v, 1):
            if "=" not in item:
                if split:  # a piece of k=v,k=v: it may be the tail of a value with a comma
                    raise ValueError(
                        f"item {i} of {len(v)} is not key=value (not shown: it may be part of "
                        "a secret; a value with a comma needs the JSON object form, e.g. "
                        '{"sasl.password": "a,b"})'
                    )
                shown = (
                    "(not shown: it names a secret)" if is_secret_kafka_key(item) else repr(item)
                )
                raise ValueError(f"expected key=value, got {shown}")
            k, _, val = item.partition("=")
            out[k.strip()] = val.strip()
        return out
    return v


KafkaOptions = Annotated[dict[str, str], NoDecode, BeforeValidator(_kv_pairs)]
NonEmpty = Annotated[str, Field(min_length=1)]

# librdkafka settings that would let an offset move past outputs not yet acknowledged: the
# worker stores and commits offsets itself, after every output is acknowledged
UNSAFE_CONSUMER = ("enable.auto.commit", "enable.auto.offset.store")
UNSAFE_ACKS = ("acks", "request.required.acks")


def _enabled(value: str) -> bool:
    return value.strip().lower() not in ("false", "0", "no", "off")


class KafkaSettings(Settings):
    """The Kafka connection of every command (worker, replay, tail, topics, dashboard): the same
    environment variables and the same ``[worker]`` TOML table as the worker, so one config file
    serves the worker and the tools. Other names in that table are the worker's: ignored here
    (the worker itself refuses unknown ones)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="STREAM_LSTM_")
    toml_section: ClassVar[str] = "worker"

    bootstrap: NonEmpty = opt("127.0.0.1:9092", "Kafka bootstrap servers")
    kafka_options: KafkaOptions = opt(
        help="librdkafka setting for every client (security: `security.protocol`, `sasl.*`, "
        "`ssl.*`); repeatable; in the environment `k=v,k=v` or a JSON object, in TOML the "
        "`[worker.kafka_options]` table",
        flag="--kafka-option", metavar="KEY=VALUE", factory=dict, hidden=True,
    )  # fmt: skip

    def kafka_shown(self) -> dict[str, str]:
        """The pass-through librdkafka options with secret values masked."""
        return redact_kafka(self.kafka_options)


class TopicSettings(KafkaSettings):
    """The Kafka connection and the worker's input and output topics (read by the dashboard)."""

    input_topic: NonEmpty = opt("events", "topic of input events (must exist)")
    output_topic: NonEmpty = opt("forecasts", "topic for forecasts (must exist)")


# SchemaRegistryClient settings that take numbers (flags and variables give strings)
_REGISTRY_NUMBERS = {
    "timeout", "max.retries", "retries.wait.ms", "retries.max.wait.ms", "cache.capacity",
    "cache.latest.ttl.sec",
}  # fmt: skip


def _number(v: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            continue
    return v  # the client says what is wrong with it


class WorkerSettings(TopicSettings):
    """`stream-lstm worker`: flags, STREAM_LSTM_* variables, or a [worker] TOML table."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_")

    model: Path = opt(help="model artifact directory")
    features: CsvList | None = opt(
        None,
        "the feature names producers send (comma-separated); the worker refuses to start if "
        "the model's differ",
        shown="(the model's)",
    )
    dlq_topic: NonEmpty = opt("events-dlq", "dead-letter topic for bad events (must exist)")
    redis: SecretStr = opt(
        SecretStr("redis://127.0.0.1:6379/0"),
        "Redis URL: `redis://user:password@host:port/db` or `…/db?password=…`, `rediss://` for "
        "TLS, `unix:///path/redis.sock?db=0`; a Redis Cluster: any node's URL (detected) or "
        "seed nodes `redis://host1:port1,host2:port2/0`; Sentinel: "
        "`redis+sentinel://[user:password@]host:port[,host:port]/<service>` (percent-encode "
        "`/ # ? @` in a password: `%2F %23 %3F %40`)",
        shown="redis://127.0.0.1:6379/0",
    )
    group: NonEmpty = opt("stream-lstm", "consumer group (and the Faust app id)")
    runtime: Literal["confluent", "faust"] = opt(
        "confluent",
        "`confluent`: the confluent-kafka driver; `faust`: the same engine as a faust-streaming "
        "agent (see Running inside Faust in the README)",
    )
    faust_web_port: Annotated[int, Field(ge=-1, le=65535)] = opt(
        -1, "with `--runtime faust`: serve Faust's web views on this port (-1: off)"
    )
    namespace: NonEmpty | None = opt(None, "Redis key prefix for state", shown="slstm:<group>")
    max_batch: Annotated[int, Field(ge=1, le=1_000_000)] = opt(
        4096, "a tick closes at this many messages …", group="ticks and commits"
    )
    max_wait_ms: Annotated[int, Field(ge=0)] = opt(
        5, "… or after this long", group="ticks and commits"
    )
    commit_interval_ms: Annotated[int, Field(ge=0)] = opt(
        1000, "commit cycle interval", group="ticks and commits"
    )
    processing_guarantee: Literal["at-least-once", "exactly-once"] = opt(
        "at-least-once",
        "`at-least-once`: after a crash some forecasts, dead letters and alerts are published "
        "again (identical values; state is never applied twice); `exactly-once`: outputs and "
        "offsets commit in one Kafka transaction per commit cycle, Redis follows it, and "
        "downstream consumers must read with `isolation.level=read_committed` (they see outputs "
        "only once their cycle commits); see Exactly-once in the README",
        group="ticks and commits",
    )
    transactional_id: NonEmpty | None = opt(
        None,
        "with `exactly-once`: the producer's `transactional.id`, unique per worker instance and "
        "the same when that instance restarts (a restart then aborts the crashed instance's open "
        "transaction at once instead of after `transaction.timeout.ms`)",
        group="ticks and commits", shown="stream-lstm-<group>-<host name>-<pid>",
    )  # fmt: skip
    device: str = opt(
        "auto", "`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`", group="ticks and commits"
    )
    threads: Annotated[int, Field(ge=1)] | None = opt(
        None,
        "torch CPU threads for the model call (a tick's call is small, and more threads "
        "spin-waiting on a busy machine stall the loop)",
        group="ticks and commits", shown="1",
    )  # fmt: skip
    late_policy: Literal["dlq", "drop"] = opt(
        "dlq", "late events: dead-letter (`dlq`) or count and drop (`drop`)", group="validation"
    )
    missing: Literal["dlq", "ffill"] = opt(
        "dlq",
        "a feature an event does not send (or sends as `null`): `dlq` dead-letters the event "
        "(`missing_feature`); `ffill` carries the key's previous value forward (a key's events "
        "before its first complete one are still dead-lettered), as `predict --missing ffill` "
        "does",
        group="validation",
    )
    max_future_ms: int = opt(
        86_400_000, "refuse event times further ahead than this (-1: off)", group="validation"
    )
    max_message_bytes: Annotated[int, Field(ge=64)] = opt(
        65_536, "refuse larger messages", group="validation"
    )
    max_key_bytes: Annotated[int, Field(ge=1)] = opt(256, "refuse longer keys", group="validation")
    allow_unknown_features: bool = opt(
        False, "ignore value names the model does not know", group="validation"
    )
    # Avro, Protobuf and JSON Schema through a Schema Registry (stream_lstm/drivers/formats.py)
    input_format: Literal["json", "avro", "protobuf", "json-schema"] = opt(
        "json",
        "the input events' format: `json`, or `avro`, `protobuf`, `json-schema` in the Schema "
        "Registry's wire format (needs `--schema-registry-url`; schemas in docs/formats.md)",
        group="formats",
    )
    output_format: Literal["json", "avro", "protobuf", "json-schema"] = opt(
        "json",
        "the forecasts' format (non-JSON: the schema is registered under "
        "`<output topic>-value`; dead letters keep their original bytes, alerts stay JSON)",
        group="formats",
    )
    schema_registry_url: SecretStr | None = opt(
        None,
        "Confluent-compatible Schema Registry URL, e.g. `http://127.0.0.1:8081` (Apicurio: "
        "`…/apis/ccompat/v7`)",
        group="formats",
    )
    schema_registry_auth: SecretStr | None = opt(
        None,
        "HTTP basic auth for the Schema Registry, `user:password`",
        metavar="USER:PASSWORD", group="formats", hidden=True,
    )  # fmt: skip
    schema_registry_options: KafkaOptions = opt(
        help="confluent-kafka SchemaRegistryClient setting, e.g. `ssl.ca.location=/ca.pem`, "
        "`bearer.auth.credentials.source=STATIC_TOKEN`, `timeout=10` (repeatable)",
        flag="--schema-registry-option", metavar="KEY=VALUE", group="formats", factory=dict,
        hidden=True,
    )  # fmt: skip
    registry_outage_limit_s: Annotated[float, Field(ge=0)] = opt(
        240.0,
        "keep retrying a Schema Registry that cannot be reached this long (events wait, "
        "nothing is dead-lettered or committed past them), then exit 1",
        flag="--registry-outage-limit", group="formats",
    )  # fmt: skip
    # live forecast scoring and excursion alerts (stream_lstm/runtime/scoring.py)
    score_steps: str = opt(
        "auto",
        "horizon steps scored against the actuals: `auto` (1, 2, 3, 6, 12, 24, 48, … up to H, "
        "and H), `all`, `none`, or a list like `1,6,24` (step 1 is always scored)",
        group="live scoring and alerts",
    )
    residual_alpha: Annotated[float, Field(gt=0, le=1)] = opt(
        0.02,
        "weight of the newest one-step residual in each key's running mean and variance "
        "(about the last 1/alpha residuals; keep that at a day of events or more)",
        group="live scoring and alerts",
    )
    alert_sigma: Annotated[float, Field(ge=0)] = opt(
        6.0,
        "an actual is outside when its residual is this many standard deviations from the "
        "key's mean residual (0: off)",
        group="live scoring and alerts",
    )
    alert_interval: bool = opt(
        True,
        "an actual farther from the median than `--alert-sigma` standard deviations as the "
        "forecast's quantiles imply them (and outside the interval) is outside too (models "
        "with quantiles)",
        group="live scoring and alerts",
    )
    alert_warmup: Annotated[int, Field(ge=0)] = opt(
        48, "residuals a key needs before the sigma rule applies", group="live scoring and alerts"
    )
    alerts_topic: str | None = opt(
        None,
        "topic for excursion alerts (open/close); without it they are only counted",
        group="live scoring and alerts", shown="(none)",
    )  # fmt: skip
    model_poll_s: Annotated[float, Field(ge=0)] = opt(
        10.0,
        "look at `--model` this often for a new model version and switch to it without a "
        "restart (0: never)",
        group="operations",
    )
    metrics_addr: NonEmpty = opt(
        "127.0.0.1", "address for `/metrics`, `/healthz`, `/readyz`", group="operations"
    )
    metrics_port: Annotated[int, Field(ge=-1, le=65535)] = opt(
        9464, "port for them (0: any free port; -1: off)", group="operations"
    )
    state_ttl_s: Annotated[int, Field(ge=0)] = opt(
        7 * 86_400, "idle keys' state expires after this long", group="operations"
    )
    redis_connect_timeout_s: Annotated[float, Field(ge=0)] = opt(
        0.0,
        "wait this long for Redis at start (0: fail at once with a clear error)",
        flag="--redis-connect-timeout", group="operations",
    )  # fmt: skip
    redis_outage_limit_s: Annotated[float, Field(ge=0)] = opt(
        240.0,
        "keep retrying a Redis outage this long, then exit 1",
        flag="--redis-outage-limit", group="operations",
    )  # fmt: skip
    redis_min_replicas: Annotated[int, Field(ge=0)] | None = opt(
        None,
        "each commit cycle waits until this many replicas of every Redis master it wrote to "
        "have its writes (Redis WAIT) before any offset is committed; default: 1 on a cluster "
        "or Sentinel master whose masters all have a replica, else 0",
        shown="auto", group="operations",
    )  # fmt: skip
    redis_wait_timeout_s: Annotated[float, Field(gt=0, le=300)] = opt(
        2.0,
        "how long a commit cycle's WAIT may take; fewer replicas by then fail the cycle (it is "
        "retried; the worker is unready meanwhile)",
        flag="--redis-wait-timeout", group="operations",
    )  # fmt: skip
    flush_timeout_s: Annotated[float, Field(gt=0)] = opt(
        120.0,
        "how long a commit cycle waits for the producer's acknowledgements before it counts "
        "the outputs as not delivered (and the worker rewinds)",
        group="operations",
    )
    # librdkafka pass-through besides `kafka_options` (every client)
    consumer_options: KafkaOptions = opt(
        help="librdkafka setting for the consumer only, e.g. `session.timeout.ms=10000` "
        "(repeatable)",
        flag="--consumer-option", metavar="KEY=VALUE", group="operations", factory=dict,
        hidden=True,
    )  # fmt: skip
    producer_options: KafkaOptions = opt(
        help="librdkafka setting for the producer only, e.g. `linger.ms=5` (repeatable)",
        flag="--producer-option", metavar="KEY=VALUE", group="operations", factory=dict,
        hidden=True,
    )  # fmt: skip

    @model_validator(mode="after")
    def _safe_delivery(self) -> Self:
        """Options and topics that would break 'an offset moves only past acknowledged
        outputs' are refused, with the reason."""
        consumer = {**self.kafka_options, **self.consumer_options}
        for k in UNSAFE_CONSUMER:
            if k in consumer and _enabled(consumer[k]):
                raise ValueError(
                    f"the librdkafka option {k}={consumer[k]} (from --kafka-option or "
                    "--consumer-option, STREAM_LSTM_KAFKA_OPTIONS or STREAM_LSTM_CONSUMER_OPTIONS, "
                    "or the TOML tables) is refused: the worker commits offsets itself, only "
                    "after every output before them is acknowledged; with it, librdkafka would "
                    "commit offsets of events whose forecasts were never delivered"
                )
        producer = {**self.kafka_options, **self.producer_options}
        for k in UNSAFE_ACKS:
            if k in producer and producer[k].strip() == "0":
                raise ValueError(
                    f"the librdkafka option {k}=0 (from --kafka-option or --producer-option, or "
                    "their STREAM_LSTM_ and TOML forms) is refused: with no acknowledgement from "
                    "the broker "
                    "a lost forecast cannot be noticed, and its offset would be committed (use "
                    "acks=all, the default)"
                )
        if "transactional.id" in producer:
            raise ValueError(
                "the librdkafka option transactional.id (from --kafka-option or "
                "--producer-option, or their STREAM_LSTM_ and TOML forms) is refused: give "
                "--processing-guarantee exactly-once and --transactional-id instead (the worker "
                "runs the transactions itself)"
            )
        if self.processing_guarantee == "exactly-once" and self.runtime == "faust":
            raise ValueError(
                "--processing-guarantee exactly-once is not supported with --runtime faust: "
                "Faust's own exactly-once mode is known to duplicate and lose messages "
                "(faust-streaming/faust #517, #323), and this runtime cannot seek back to abort "
                "a transaction; use the confluent runtime (the default) for exactly-once"
            )
        isolation = consumer.get("isolation.level", "read_committed").strip()
        if self.processing_guarantee == "exactly-once" and isolation != "read_committed":
            raise ValueError(
                f"the librdkafka option isolation.level={isolation} is refused with "
                "--processing-guarantee exactly-once: events of the input's aborted transactions "
                "would be applied (use read_committed, the default)"
            )
        txn = producer.get("transaction.timeout.ms")
        if self.processing_guarantee == "exactly-once" and txn is not None:
            least = self.commit_interval_ms + 5000
            if not txn.strip().isdigit() or int(txn) < least:
                raise ValueError(
                    f"the librdkafka option transaction.timeout.ms={txn} is refused with "
                    f"--processing-guarantee exactly-once and --commit-interval-ms "
                    f"{self.commit_interval_ms}: a transaction stays open for a commit interval "
                    f"and its commit, and the broker aborts it at this timeout; give at least "
                    f"{least} (the commit interval + 5 s), or leave it unset"
                )
        if self.transactional_id and self.processing_guarantee != "exactly-once":
            raise ValueError(
                "--transactional-id is only used with --processing-guarantee exactly-once"
            )
        outputs = {
            "--output-topic": self.output_topic,
            "--dlq-topic": self.dlq_topic,
            **({"--alerts-topic": self.alerts_topic} if self.alerts_topic else {}),
        }
        same = [flag for flag, t in outputs.items() if t == self.input_topic]
        if same:
            raise ValueError(
                f"{' and '.join(same)} cannot be the input topic {self.input_topic!r}: the worker "
                "would consume its own output (each dead letter a new bad event, without end)"
            )
        return self

    @model_validator(mode="after")
    def _formats(self) -> Self:
        """A registry format needs the registry; its URL and basic auth have their own
        settings (kept secret), not options."""
        needs = [
            f"{flag} {fmt}"
            for flag, fmt in (
                ("--input-format", self.input_format),
                ("--output-format", self.output_format),
            )
            if fmt != "json"
        ]
        if needs and self.schema_registry_url is None:
            raise ValueError(
                f"{' and '.join(needs)} needs a Schema Registry: set --schema-registry-url "
                "(STREAM_LSTM_SCHEMA_REGISTRY_URL, or schema_registry_url in the [worker] "
                "table), e.g. http://127.0.0.1:8081"
            )
        for k in ("url", "basic.auth.user.info"):
            if k in self.schema_registry_options:
                flag = "--schema-registry-url" if k == "url" else "--schema-registry-auth"
                raise ValueError(
                    f"the Schema Registry option {k} is refused in --schema-registry-option: "
                    f"give {flag} instead"
                )
        return self

    def registry_conf(self) -> dict[str, Any]:
        """confluent-kafka's SchemaRegistryClient configuration (holds secrets: never log it;
        :meth:`registry_shown` is the loggable form)."""
        conf: dict[str, Any] = {"timeout": 10}  # seconds per request (the client's default:
        # none, so a registry that accepts connections but does not answer hangs the worker)
        for k, v in self.schema_registry_options.items():
            conf[k] = _number(v) if k in _REGISTRY_NUMBERS else v
        if self.schema_registry_url is not None:
            conf["url"] = self.schema_registry_url.get_secret_value()
        if self.schema_registry_auth is not None:
            conf["basic.auth.user.info"] = self.schema_registry_auth.get_secret_value()
            conf.setdefault("basic.auth.credentials.source", "USER_INFO")
        return conf

    def registry_shown(self) -> dict[str, str]:
        """The Schema Registry settings with secrets masked."""
        shown = redact_kafka(self.schema_registry_options)
        if self.schema_registry_url is not None:
            shown["url"] = redact_url(self.schema_registry_url.get_secret_value())
        if self.schema_registry_auth is not None:
            user = self.schema_registry_auth.get_secret_value().partition(":")[0]
            shown["basic.auth.user.info"] = f"{user}:{MASK}"
        return shown

    @field_validator("model", mode="before")
    @classmethod
    def _model_given(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty: give the model artifact directory")
        return v

    @field_validator("score_steps")
    @classmethod
    def _steps_syntax(cls, v: str) -> str:
        from stream_lstm.runtime.scoring import resolve_steps

        resolve_steps(v, 10**6)  # the syntax; the model's horizon is checked at start
        return v

    def scoring(self) -> ScoringConfig:
        from stream_lstm.runtime.scoring import ScoringConfig

        return ScoringConfig(
            steps=self.score_steps,
            alpha=self.residual_alpha,
            sigma=self.alert_sigma,
            interval=self.alert_interval,
            warmup=self.alert_warmup,
        )

    @property
    def state_namespace(self) -> str:
        return self.namespace or f"slstm:{self.group}"

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly-once"

    def transaction_timeout_ms(self) -> int:
        """The producer's ``transaction.timeout.ms`` (exactly-once): as set, else 10 s, or two
        commit intervals and 5 s when that is longer."""
        producer = {**self.kafka_options, **self.producer_options}
        if "transaction.timeout.ms" in producer:
            return int(producer["transaction.timeout.ms"])
        return max(10_000, 2 * self.commit_interval_ms + 5000)

    def transactional_id_or_default(self) -> str:
        """The producer's ``transactional.id`` (exactly-once)."""
        return (
            self.transactional_id
            or f"stream-lstm-{self.group}-{socket.gethostname()}-{os.getpid()}"
        )

    def consumer_config(self) -> dict[str, str]:
        return {**self.kafka_options, **self.consumer_options}

    def producer_config(self) -> dict[str, str]:
        return {**self.kafka_options, **self.producer_options}

    def kafka_shown(self) -> dict[str, str]:
        """All pass-through librdkafka options with secret values masked."""
        return redact_kafka(
            {**self.kafka_options, **self.consumer_options, **self.producer_options}
        )


# variables read outside the settings classes (fail points, fault reports, the test services)
OTHER_VARIABLES = frozenset(
    {"STREAM_LSTM_FAILPOINT", "STREAM_LSTM_FAULT_REPORT", "STREAM_LSTM_KAFKA",
     "STREAM_LSTM_REDIS_SERVER"}
)  # fmt: skip


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``STREAM_LSTM_*`` environment variables that no setting reads (a typo, or a flag's name
    where the setting's differs: ``STREAM_LSTM_REDIS_CONNECT_TIMEOUT`` for ``…_TIMEOUT_S``)."""
    env = os.environ if environ is None else environ
    known = set(OTHER_VARIABLES)
    todo: list[type[Settings]] = [Settings]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        prefix = cls.model_config.get("env_prefix", "")
        known |= {f"{prefix}{name.upper()}" for name in cls.model_fields}
    return sorted(k for k in env if k.startswith("STREAM_LSTM_") and k not in known)
