"""Apache Kafka 4.x, single node in KRaft mode, from Maven Central jars (no Docker, no tarball).

The classpath is resolved once with Maven (``resources/pom.xml``) into a cache directory keyed
by the POM's hash, then reused. Each fresh start formats a new data directory with
``kafka.tools.StorageTool`` and starts ``kafka.Kafka``; ready means the *broker* port accepts TCP
connections (Kafka opens it only once it can serve; the controller port opens earlier).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stream_lstm.errors import StackError
from stream_lstm.stack import procs

KAFKA_VERSION_RE = re.compile(r"<kafka.version>([^<]+)</kafka.version>")
JAVA_PERF_OPTS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]


def _resource(name: str) -> str:
    return resources.files("stream_lstm.stack").joinpath("resources", name).read_text()


def kafka_version() -> str:
    m = KAFKA_VERSION_RE.search(_resource("pom.xml"))
    return m.group(1) if m else "unknown"


def java_major_version() -> int:
    """The major version of ``java`` on PATH; a StackError says how to install it if missing."""
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java was not found on PATH. Apache Kafka 4.x needs Java 17 or newer "
            "(Debian: apt-get install openjdk-17-jre-headless)."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise StackError(f"could not read the Java version from `java -version`: {out.stderr!r}")
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def ensure_jars(cache_dir: Path) -> Path:
    """Resolve the broker classpath with Maven once; return the directory of jars.

    Keyed by the POM's hash, so changing versions never mixes old and new jars. A file lock
    makes concurrent first runs (e.g. two test sessions) resolve it only once.
    """
    pom = _resource("pom.xml")
    key = hashlib.sha256(pom.encode()).hexdigest()[:12]
    home = cache_dir / f"kafka-{kafka_version()}-{key}"
    lib = home / "lib"
    done = home / ".complete"
    if done.exists():
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                "mvn (Apache Maven) was not found on PATH; it resolves the Kafka broker jars "
                "from Maven Central once (Debian: apt-get install maven)."
            )
        (home / "pom.xml").write_text(pom)
        shutil.rmtree(lib, ignore_errors=True)
        log = home / "mvn.log"
        print(f"Resolving Apache Kafka {kafka_version()} jars from Maven Central (once) ...")
        with open(log, "w") as out:
            rc = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(home / "pom.xml"),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={lib}",
                    "-DincludeScope=runtime",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        jars = list(lib.glob("*.jar")) if lib.exists() else []
        if rc != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
            raise StackError(
                f"Maven could not resolve the Kafka broker jars (exit {rc}); read {log}"
            )
        done.write_text(f"{len(jars)} jars\n")
    return lib


def new_cluster_id() -> str:
    """16 random bytes, base64url without padding, not starting with '-' (KRaft's rule)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True)
class KafkaSpec:
    run_dir: Path  # holds server.properties, data/, logs/, kafka.pid
    cache_dir: Path  # holds the resolved jars
    host: str = "127.0.0.1"
    broker_port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    ready_timeout_s: float = 90.0
    # server.properties lines added after the template's (a later key wins): e.g. a SASL
    # listener for the security tests
    extra_properties: tuple[tuple[str, str], ...] = ()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "kafka.pid"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def out_file(self) -> Path:
        return self.log_dir / "kafkaServer.out"


class KafkaBroker:
    """Start, stop and inspect one local broker described by a :class:`KafkaSpec`."""

    name = "kafka"

    def __init__(self, spec: KafkaSpec) -> None:
        self.spec = spec

    def pid(self) -> int | None:
        return procs.read_pid(self.spec.pid_file)

    def _java_cmd(self, lib: Path, heap: str, main: list[str]) -> list[str]:
        log4j = self.spec.run_dir / "log4j2.properties"
        return [
            "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            *JAVA_PERF_OPTS,
            f"-Dkafka.logs.dir={self.spec.log_dir}",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{lib}/*",
            *main,
        ]

    def start(self, *, fresh: bool = True) -> float:
        """Start the broker; with ``fresh`` format a new data dir. Returns seconds to ready."""
        s = self.spec
        if java_major_version() < 17:
            raise StackError("Apache Kafka 4.x needs Java 17 or newer; `java -version` is older.")
        procs.require_free_port(s.host, s.broker_port, "Kafka broker", "--kafka-port")
        procs.require_free_port(s.host, s.controller_port, "Kafka controller", "--controller-port")
        lib = ensure_jars(s.cache_dir)
        s.run_dir.mkdir(parents=True, exist_ok=True)
        s.log_dir.mkdir(parents=True, exist_ok=True)
        props = s.run_dir / "server.properties"
        (s.run_dir / "log4j2.properties").write_text(_resource("log4j2.properties"))
        props.write_text(
            _resource("server.properties.template")
            .replace("@BROKER_PORT@", str(s.broker_port))
            .replace("@CONTROLLER_PORT@", str(s.controller_port))
            .replace("@DATA_DIR@", str(s.data_dir))
            + "".join(f"{k}={v}\n" for k, v in s.extra_properties)
        )
        if fresh or not (s.data_dir / "meta.properties").exists():
            shutil.rmtree(s.data_dir, ignore_errors=True)
            fmt = subprocess.run(
                self._java_cmd(
                    lib,
                    "256m",
                    [
                        *("kafka.tools.StorageTool", "format", "--standalone"),
                        *("-t", new_cluster_id(), "-c", str(props)),
                    ],
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                (s.log_dir / "format.out").write_text(fmt.stdout + fmt.stderr)
                raise StackError(
                    f"formatting the Kafka data dir failed; read {s.log_dir / 'format.out'}"
                )
        # The fingerprint (the run dir) lets `down` verify that a recorded PID is still ours.
        proc = procs.spawn(
            self._java_cmd(lib, s.heap, ["kafka.Kafka", str(props)]),
            log_file=s.out_file,
            pid_file=s.pid_file,
            fingerprint=str(props),
            env={**os.environ, "KAFKA_HEAP_OPTS": ""},
        )
        try:
            return procs.wait_until(
                lambda: procs.port_accepts(s.host, s.broker_port),
                alive=lambda: proc.poll() is None,
                timeout_s=s.ready_timeout_s,
                what=f"the Kafka broker (pid {proc.pid})",
                log_hint=f"{s.log_dir / 'server.log'} and {s.out_file}",
                log_files=[s.out_file, s.log_dir / "server.log"],
            )
        except Exception:
            procs.stop_pid(proc.pid, grace_s=5)
            raise

    def stop(self, grace_s: float = 30.0) -> bool:
        """Stop by PID (SIGTERM, then SIGKILL after ``grace_s``). False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        procs.stop_pid(pid, grace_s)
        self.spec.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (for fault tests); its data dir stays for a restart."""
        pid = self.pid()
        if pid is not None:
            procs.stop_pid(pid, grace_s=0, first=signal.SIGKILL)

    def ready(self) -> bool:
        return procs.port_accepts(self.spec.host, self.spec.broker_port)
