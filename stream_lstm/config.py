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
import tomllib
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
from stream_lstm.redact import is_secret_kafka_key, redact_kafka

if TYPE_CHECKING:
    from stream_lstm.scoring import ScoringConfig

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
        self._values = {k.replace("-", "_"): v for k, v in raw.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)  # unknown names reach validation and are refused there


class Settings(BaseSettings):
    """Base for every command's settings."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_")
    toml_section: ClassVar[str] = ""
    # fields whose flag is not --<field-name> (named in error messages)
    flag_names: ClassVar[dict[str, str]] = {}

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
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def build_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from flags (only those not None), env vars and the TOML file.

    A ValidationError becomes a ConfigError that names the flag and the environment variable.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    token = _TOML.set(load_toml(config_file))
    try:
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
            flag = cls.flag_names.get(name, f"--{name.replace('_', '-')}")
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

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        ports = [self.kafka_port, self.controller_port, self.redis_port]
        if len(set(ports)) != len(ports):
            raise ValueError(
                f"--kafka-port, --controller-port and --redis-port must differ (got {ports})"
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
    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_TRAIN_")
    toml_section: ClassVar[str] = "train"

    out: Path
    model: Literal["lstm", "cnn-lstm-attn"] = "lstm"
    time_step: Annotated[int, Field(ge=1)] | None = None
    horizon: Annotated[int, Field(ge=1)] | None = None
    hidden_size: Annotated[int, Field(ge=1)] | None = None
    layers: Annotated[int, Field(ge=1)] = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    learned_init: bool = False
    quantiles: CsvFloats | None = None
    conv_channels: Annotated[int, Field(ge=1)] = 32
    conv_kernel: Annotated[int, Field(ge=1)] = 3
    loss: Literal["mse", "mae", "pinball"] | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 2e-3
    clip: Annotated[float, Field(gt=0)] = 1.0
    patience: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    tbptt_chunks: Annotated[int, Field(ge=1)] = 8
    device: str = "auto"
    scaling: Literal["global", "per-key"] | None = None
    log1p: CsvList | None = None
    calendar: CsvList | None = None
    timezone: str | None = None
    split: CsvFloats = Field(default_factory=lambda: [0.7, 0.15, 0.15])
    split_dates: CsvList | None = None
    fill: Literal["interpolate", "ffill", "zero"] = "interpolate"
    max_gap: Annotated[int, Field(ge=0)] = 24
    repair: bool = True
    repair_window: Annotated[int, Field(ge=3)] = 25
    repair_k: Annotated[float, Field(gt=0)] = 6.0


def _kv_pairs(v: Any) -> Any:
    """``["a=1", "b=2"]`` or ``"a=1,b=2"`` or a JSON object string → a dict of strings."""
    if isinstance(v, str):
        v = v.strip()
        if v.startswith("{"):
            import json

            return json.loads(v)
        v = [p for p in v.split(",") if p.strip()]
    if isinstance(v, list):
        out = {}
        for item in v:
            if "=" not in item:
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
    flag_names: ClassVar[dict[str, str]] = {"kafka_options": "--kafka-option"}

    bootstrap: NonEmpty = "127.0.0.1:9092"
    # librdkafka pass-through for every client (security settings); out of repr: secrets
    kafka_options: KafkaOptions = Field(default_factory=dict, repr=False)

    def kafka_shown(self) -> dict[str, str]:
        """The pass-through librdkafka options with secret values masked."""
        return redact_kafka(self.kafka_options)


class TopicSettings(KafkaSettings):
    """The Kafka connection and the worker's input and output topics (read by the dashboard)."""

    input_topic: NonEmpty = "events"
    output_topic: NonEmpty = "forecasts"


class WorkerSettings(TopicSettings):
    """`stream-lstm worker`: flags, STREAM_LSTM_* variables, or a [worker] TOML table."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="STREAM_LSTM_")
    flag_names: ClassVar[dict[str, str]] = {
        **KafkaSettings.flag_names,
        "consumer_options": "--consumer-option",
        "producer_options": "--producer-option",
        "redis_connect_timeout_s": "--redis-connect-timeout",
        "redis_outage_limit_s": "--redis-outage-limit",
    }

    model: Path
    features: CsvList | None = None  # what producers send; checked against the model at start
    dlq_topic: NonEmpty = "events-dlq"
    redis: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    group: NonEmpty = "stream-lstm"
    namespace: NonEmpty | None = None  # Redis key prefix; default "slstm:<group>"
    max_batch: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    max_wait_ms: Annotated[int, Field(ge=0)] = 5
    commit_interval_ms: Annotated[int, Field(ge=0)] = 1000
    metrics_addr: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=-1, le=65535)] = 9464  # 0: any free port, -1: off
    device: str = "auto"
    threads: Annotated[int, Field(ge=1)] | None = None
    state_ttl_s: Annotated[int, Field(ge=0)] = 7 * 86_400
    late_policy: Literal["dlq", "drop"] = "dlq"
    missing: Literal["dlq", "ffill"] = "dlq"  # a feature an event did not send (or sent null)
    max_future_ms: int = 86_400_000
    max_message_bytes: Annotated[int, Field(ge=64)] = 65_536
    max_key_bytes: Annotated[int, Field(ge=1)] = 256
    allow_unknown_features: bool = False
    redis_connect_timeout_s: Annotated[float, Field(ge=0)] = 0.0
    redis_outage_limit_s: Annotated[float, Field(ge=0)] = 240.0
    flush_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    # live forecast scoring and excursion alerts (stream_lstm/scoring.py)
    score_steps: str = "auto"  # auto, all, none, or a list like 1,6,24
    residual_alpha: Annotated[float, Field(gt=0, le=1)] = 0.02
    alert_sigma: Annotated[float, Field(ge=0)] = 6.0
    alert_interval: bool = True
    alert_warmup: Annotated[int, Field(ge=0)] = 48
    alerts_topic: str | None = None  # None: alerts are counted in metrics, not produced
    # hot model reload: look at the --model path this often for a new version (0: never)
    model_poll_s: Annotated[float, Field(ge=0)] = 10.0
    # "confluent": the confluent-kafka driver (worker.py); "faust": the same engine as a Faust
    # agent (faust_app.py), with Faust's web server off unless faust_web_port >= 0
    runtime: Literal["confluent", "faust"] = "confluent"
    faust_web_port: Annotated[int, Field(ge=-1, le=65535)] = -1
    # librdkafka pass-through besides `kafka_options` (every client): the consumer only (e.g.
    # session.timeout.ms) or the producer only (e.g. linger.ms)
    consumer_options: KafkaOptions = Field(default_factory=dict, repr=False)
    producer_options: KafkaOptions = Field(default_factory=dict, repr=False)

    @model_validator(mode="after")
    def _safe_delivery(self) -> Self:
        """Options and topics that would break 'an offset moves only past acknowledged
        outputs' are refused, with the reason."""
        consumer = {**self.kafka_options, **self.consumer_options}
        for k in UNSAFE_CONSUMER:
            if k in consumer and _enabled(consumer[k]):
                raise ValueError(
                    f"--consumer-option {k}={consumer[k]} is refused: the worker commits offsets "
                    "itself, only after every output before them is acknowledged; with it, "
                    "librdkafka would commit offsets of events whose forecasts were never "
                    "delivered"
                )
        producer = {**self.kafka_options, **self.producer_options}
        for k in UNSAFE_ACKS:
            if k in producer and producer[k].strip() == "0":
                raise ValueError(
                    f"--producer-option {k}=0 is refused: with no acknowledgement from the broker "
                    "a lost forecast cannot be noticed, and its offset would be committed (use "
                    "acks=all, the default)"
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

    @field_validator("score_steps")
    @classmethod
    def _steps_syntax(cls, v: str) -> str:
        from stream_lstm.scoring import resolve_steps

        resolve_steps(v, 10**6)  # the syntax; the model's horizon is checked at start
        return v

    def scoring(self) -> ScoringConfig:
        from stream_lstm.scoring import ScoringConfig

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

    def consumer_config(self) -> dict[str, str]:
        return {**self.kafka_options, **self.consumer_options}

    def producer_config(self) -> dict[str, str]:
        return {**self.kafka_options, **self.producer_options}

    def kafka_shown(self) -> dict[str, str]:
        """All pass-through librdkafka options with secret values masked."""
        return redact_kafka(
            {**self.kafka_options, **self.consumer_options, **self.producer_options}
        )
