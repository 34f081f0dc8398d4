"""A local Confluent-compatible Schema Registry: Apicurio Registry 3.x from Maven Central.

``io.apicurio:apicurio-registry-app:<version>:tar.gz:all`` is the whole Quarkus application
(the runner jar and its ``lib/``). It is fetched once with Maven (``dependency:copy``, as the
Kafka jars are) into the cache directory, unpacked there, and started with ``java -jar``;
storage is in memory (H2, its default), so each start is empty. The Confluent Schema Registry
API that confluent-kafka's serializers speak is served under ``/apis/ccompat/v7``; ready means
``GET /apis/ccompat/v7/subjects`` answers 200.

3.0.9 is the newest release that runs on Java 17 (3.1 and later are built for Java 21).
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import subprocess
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stream_lstm.errors import StackError
from stream_lstm.stack import procs
from stream_lstm.stack.kafka import java_major_version

APICURIO_VERSION = "3.0.9"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
CCOMPAT = "/apis/ccompat/v7"


def ensure_registry(cache_dir: Path, version: str = APICURIO_VERSION) -> Path:
    """Fetch and unpack the Apicurio Registry application once; return its runner jar."""
    home = cache_dir / f"apicurio-registry-{version}"
    done = home / ".complete"
    if done.exists():
        return Path(done.read_text().strip())
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return Path(done.read_text().strip())
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                "mvn (Apache Maven) was not found on PATH; it fetches Apicurio Registry from "
                "Maven Central once (Debian: apt-get install maven)."
            )
        dl = home / "download"
        shutil.rmtree(dl, ignore_errors=True)
        log = home / "mvn.log"
        print(f"Fetching Apicurio Registry {version} from Maven Central (once) ...")
        with open(log, "w") as out:
            rc = subprocess.run(
                [
                    mvn, "-q", "-B", "dependency:copy",
                    f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                    f"-DoutputDirectory={dl}",
                ],
                stdout=out, stderr=subprocess.STDOUT, check=False,
            ).returncode  # fmt: skip
        archives = list(dl.glob("*.tar.gz")) if dl.exists() else []
        if rc != 0 or not archives:
            raise StackError(f"Maven could not fetch {ARTIFACT} (exit {rc}); read {log}")
        app = home / "app"
        shutil.rmtree(app, ignore_errors=True)
        with tarfile.open(archives[0]) as tar:
            tar.extractall(app, filter="data")
        shutil.rmtree(dl, ignore_errors=True)
        runners = sorted(app.glob("*-runner.jar")) or sorted(app.glob("quarkus-run.jar"))
        if not runners:
            raise StackError(f"no runner jar in {ARTIFACT} (unpacked in {app})")
        done.write_text(f"{runners[0]}\n")
        return runners[0]


@dataclass(frozen=True)
class RegistrySpec:
    run_dir: Path  # holds registry.pid and registry.out
    cache_dir: Path  # holds the unpacked application
    host: str = "127.0.0.1"
    port: int = 8081
    heap: str = "256m"
    ready_timeout_s: float = 120.0
    version: str = APICURIO_VERSION

    @property
    def url(self) -> str:
        """The Confluent-compatible API (what ``--schema-registry-url`` takes)."""
        return f"http://{self.host}:{self.port}{CCOMPAT}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "registry.pid"

    @property
    def out_file(self) -> Path:
        return self.run_dir / "registry.out"


class SchemaRegistry:
    """Start, stop and probe one local Apicurio Registry described by a :class:`RegistrySpec`."""

    name = "schema-registry"

    def __init__(self, spec: RegistrySpec) -> None:
        self.spec = spec

    @property
    def url(self) -> str:
        return self.spec.url

    def pid(self) -> int | None:
        return procs.read_pid(self.spec.pid_file)

    @classmethod
    def recorded(cls, run_dir: Path, cache_dir: Path, host: str) -> SchemaRegistry | None:
        """The registry an earlier start left running in ``run_dir`` (its port is recorded in
        ``run_dir/port``), else None."""
        try:
            port = int((run_dir / "port").read_text().strip())
        except (OSError, ValueError):
            return None
        reg = cls(RegistrySpec(run_dir=run_dir, cache_dir=cache_dir, host=host, port=port))
        return reg if reg.pid() is not None else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.spec.url}/subjects", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start(self) -> float:
        """Start the registry (empty: in-memory storage). Returns seconds to ready."""
        s = self.spec
        if java_major_version() < 17:
            raise StackError("Apicurio Registry 3.0 needs Java 17 or newer.")
        procs.require_free_port(s.host, s.port, "Schema Registry", "--registry-port")
        jar = ensure_registry(s.cache_dir, s.version)
        s.run_dir.mkdir(parents=True, exist_ok=True)
        (s.run_dir / "port").write_text(f"{s.port}\n")
        fingerprint = f"-Dstream_lstm.run_dir={s.run_dir}"
        proc = procs.spawn(
            [
                "java", f"-Xmx{s.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                fingerprint,
                f"-Dquarkus.http.host={s.host}", f"-Dquarkus.http.port={s.port}",
                "-Dquarkus.http.access-log.enabled=false",
                "-jar", str(jar),
            ],
            log_file=s.out_file, pid_file=s.pid_file, fingerprint=fingerprint, cwd=s.run_dir,
        )  # fmt: skip
        try:
            return procs.wait_until(
                self.ready,
                alive=lambda: proc.poll() is None,
                timeout_s=s.ready_timeout_s,
                what=f"the Schema Registry (pid {proc.pid})",
                log_hint=str(s.out_file),
                log_files=[s.out_file],
            )
        except Exception:
            procs.stop_pid(proc.pid, grace_s=5)
            raise

    def stop(self, grace_s: float = 20.0) -> bool:
        """Stop by PID (SIGTERM, then SIGKILL after ``grace_s``). False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        procs.stop_pid(pid, grace_s)
        self.spec.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL it (for fault tests)."""
        pid = self.pid()
        if pid is not None:
            procs.stop_pid(pid, grace_s=0, first=signal.SIGKILL)
