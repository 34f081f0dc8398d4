"""``stream-lstm migrate-state``: copy the state records of the old Redis key layout to the
bucketed one (a one-off upgrade step).

Releases before the bucketed layout (single Redis only) kept a key's record at
``<namespace>:<model version>:{<entity key>}`` and one epoch marker ``<namespace>:epoch``. The
store now reads ``<namespace>:<model version>:{s<bucket>}:<entity key>`` (see
:mod:`stream_lstm.stores.redis`), so a worker of this release started on old records finds none
of them and every key restarts from zero state. This command finds the old names (``SCAN`` on
every master) and copies each value to its new name with its TTL (``SET … PX ttl NX``: a record
already at the new name, written by a worker of this release, is kept). The old names stay until
``--delete-old`` (then they, and the old epoch marker, are deleted once their copy exists): a
run can be repeated, and the old release still finds its records (a roll-back) until then.
``<namespace>:versions`` is the same in both layouts and is left alone.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream_lstm.commands._state import add_state_flags, where_state_is
from stream_lstm.errors import ConfigError, StateError

if TYPE_CHECKING:
    import redis

    from stream_lstm.stores.redis_nodes import Nodes

BATCH = 1000  # old names per pipelined batch (and the SCAN COUNT)
EXAMPLES = 5  # old → new names shown by --dry-run
OLD_EPOCH = "epoch"  # <namespace>:epoch, the old layout's one epoch marker
_NEW_TAIL = re.compile(r"\{s(\d{1,4})\}:(.*)", re.S)


def old_record(name: str, namespace: str) -> tuple[str, str] | None:
    """``(model version, entity key)`` when ``name`` is an old-layout record name of
    ``namespace`` (``<namespace>:<version>:{<key>}``), else None: new-layout records
    (``…:{s<bucket>}:<key>``), epoch markers (old and new), the version list and other
    namespaces' names are not."""
    prefix = namespace + ":"
    if not name.startswith(prefix):
        return None
    version, sep, rest = name[len(prefix) :].partition(":")
    if not sep or not version or version == OLD_EPOCH:
        return None
    if len(rest) < 2 or rest[0] != "{" or rest[-1] != "}":
        return None
    new = _NEW_TAIL.fullmatch(rest)
    if new is not None and _is_new(int(new.group(1)), new.group(2)):
        return None  # a new-layout record whose entity key ends with "}"
    return version, rest[1:-1]


def _is_new(bucket: int, key: str) -> bool:
    from stream_lstm.stores.redis import BUCKETS, bucket_of

    return bucket < BUCKETS and bucket_of(key) == bucket


def new_name(namespace: str, version: str, key: str) -> str:
    """The bucketed name of a key's record (as ``RedisStateStore.record_key`` builds it)."""
    from stream_lstm.stores.redis import TAGS, bucket_of

    return f"{namespace}:{version}:{TAGS[bucket_of(key)]}:{key}"


def scan_pattern(namespace: str) -> str:
    """``SCAN MATCH`` pattern of every name under ``namespace`` (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", namespace) + ":*"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate-state",
        help="copy Redis state records of the old key layout to the bucketed one (upgrade step)",
        description=(
            "One-off upgrade step: copy every state record of the old key layout "
            "(<namespace>:<version>:{<key>}, releases that ran on a single Redis only) to the "
            "bucketed layout this release reads (<namespace>:<version>:{s<bucket>}:<key>), "
            "keeping each record's TTL. A record already at its new name (written by a worker "
            "of this release) is kept, never overwritten. The old names are kept unless "
            "--delete-old is given, so the command can run again. Stop the old workers first "
            "(a record they write after its copy is not copied again), run it, then start the "
            "new ones. --redis, --namespace and --group are the worker's settings: each comes "
            "from its flag, else STREAM_LSTM_REDIS / STREAM_LSTM_NAMESPACE / STREAM_LSTM_GROUP, "
            "else the [worker] table of --config, else the worker's default."
        ),
        epilog=(
            "example: stream-lstm migrate-state --redis redis://127.0.0.1:6379/0 --group "
            "stream-lstm --dry-run"
        ),
    )
    add_state_flags(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="count the old records, show a few, say what would be copied; change nothing",
    )
    p.add_argument(
        "--delete-old",
        action="store_true",
        help="after copying, delete the old names whose copy exists and the old epoch marker "
        "(default: keep them)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


@dataclass
class Counts:
    scanned: int = 0  # names under the namespace seen by SCAN
    found: int = 0  # old-layout record names among them
    copied: int = 0  # (--dry-run: would be copied)
    already: int = 0  # a record at the new name exists: kept
    deleted: int = 0  # old names deleted (--delete-old)
    skipped: int = 0  # not a state record, or gone before it was read
    failed: int = 0  # a Redis error on that name: run again
    examples: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Old:
    name: str
    new: str
    slot: int
    value: bytes = b""
    ttl: int = -1


class Migration:
    """The copy (and deletion) over every master of ``nodes`` (a resolved
    :class:`~stream_lstm.stores.redis_nodes.Nodes`)."""

    def __init__(self, nodes: Nodes, namespace: str, *, dry_run: bool, delete_old: bool) -> None:
        self.nodes = nodes
        self.namespace = namespace
        self.dry_run = dry_run
        self.delete_old = delete_old
        self.counts = Counts()

    def _addr(self, slot: int) -> str:
        from stream_lstm.stores.redis_nodes import SINGLE

        return self.nodes.node_of(slot) if self.nodes.mode == "cluster" else SINGLE

    def batches(self) -> Iterator[tuple[redis.Redis, list[Old]]]:
        """Per master, its old-layout names in batches of at most BATCH (with the master's
        client)."""
        from stream_lstm.stores.redis import TAG_SLOT, bucket_of

        pattern = scan_pattern(self.namespace)
        for addr in self.nodes.masters():
            client = self.nodes.client(addr)
            batch: list[Old] = []
            for raw in client.scan_iter(match=pattern, count=BATCH):
                self.counts.scanned += 1
                try:
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                except UnicodeDecodeError:
                    continue  # the store writes UTF-8 names only
                parsed = old_record(name, self.namespace)
                if parsed is None:
                    continue
                version, key = parsed
                self.counts.found += 1
                batch.append(
                    Old(name, new_name(self.namespace, version, key), TAG_SLOT[bucket_of(key)])
                )
                if len(batch) >= BATCH:
                    yield client, batch
                    batch = []
            if batch:
                yield client, batch

    def run_batch(self, src: redis.Redis, batch: list[Old]) -> None:
        """Read the batch's values and TTLs (one pipeline on the master that holds them), write
        the new names (one pipeline per node that owns them), delete the old names whose copy
        exists (with --delete-old)."""
        c = self.counts
        pipe = src.pipeline(transaction=False)
        for o in batch:
            pipe.get(o.name)
            pipe.pttl(o.name)
        got = pipe.execute(raise_on_error=False)
        todo: dict[str, list[Old]] = {}
        for i, o in enumerate(batch):
            value, ttl = got[2 * i], got[2 * i + 1]
            for r in (value, ttl):
                if isinstance(r, BaseException) and "WRONGTYPE" not in str(r):
                    self._failed(o.name, r)
                    break
            else:
                if not isinstance(value, bytes) or not value.startswith(b"SLS") or ttl == -2:
                    c.skipped += 1  # not a string record of ours, or expired meanwhile
                    continue
                o.value, o.ttl = value, int(ttl)
                todo.setdefault(self._addr(o.slot), []).append(o)
        done: list[str] = []  # old names whose copy exists now
        for addr, olds in todo.items():
            pipe = self.nodes.client(addr).pipeline(transaction=False)
            for o in olds:
                if self.dry_run:
                    pipe.exists(o.new)
                else:
                    pipe.set(o.new, o.value, px=o.ttl if o.ttl > 0 else None, nx=True)
            for o, r in zip(olds, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(r, BaseException):
                    self._failed(o.new, r)
                    continue
                there = bool(r) if self.dry_run else not r
                if there:
                    c.already += 1
                else:
                    c.copied += 1
                    if len(c.examples) < EXAMPLES:
                        c.examples.append((o.name, o.new))
                done.append(o.name)
        if not self.delete_old or not done:
            return
        if self.dry_run:
            c.deleted += len(done)
            return
        pipe = src.pipeline(transaction=False)
        for name in done:
            pipe.delete(name)
        for name, r in zip(done, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(r, BaseException):
                self._failed(name, r)
            else:
                c.deleted += int(r)

    def delete_old_marker(self) -> bool:
        """Delete ``<namespace>:epoch`` (with --delete-old); True if there was one."""
        from redis.crc import key_slot

        name = f"{self.namespace}:{OLD_EPOCH}"
        client = self.nodes.client(self._addr(key_slot(name.encode())))
        if self.dry_run:
            return bool(client.exists(name))
        return bool(client.delete(name))

    def _failed(self, name: str, e: BaseException) -> None:
        self.counts.failed += 1
        if len(self.counts.errors) < EXAMPLES:
            self.counts.errors.append(f"{name}: {type(e).__name__}: {e}")


def _open(url: str) -> Nodes:
    """The resolved nodes of ``url``; a StateError (exit 1) when Redis cannot be reached."""
    import redis

    from stream_lstm.stores.redis_nodes import open_nodes, resolve

    nodes = open_nodes(url)
    try:
        return resolve(nodes)
    except TypeError as e:  # an unknown URL parameter reaches the connection's init
        nodes.close()
        name = str(e).partition("unexpected keyword argument ")[2].strip("'") or "?"
        raise ConfigError(
            f"--redis {nodes.shown}: the URL parameter {name!r} is not one redis-py knows"
        ) from None
    except redis.RedisError as e:
        nodes.close()
        raise StateError(f"cannot reach Redis at {nodes.shown}: {type(e).__name__}: {e}") from None


def run(args: argparse.Namespace) -> int:
    import redis
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    url, namespace = where_state_is(args)
    nodes = _open(url)
    where = f"{nodes.describe()} ({nodes.mode})"
    m = Migration(nodes, namespace, dry_run=args.dry_run, delete_old=args.delete_old)
    c = m.counts
    console = Console(stderr=True)
    columns = [
        TextColumn("migrate-state"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    marker = False
    try:
        with Progress(*columns, console=console, disable=args.no_progress) as bar:
            task = bar.add_task("migrate", total=None, info="")
            for src, batch in m.batches():
                m.run_batch(src, batch)
                done = c.copied + c.already
                bar.update(
                    task, info=f"{c.scanned:,} names scanned, {c.found:,} old, {done:,} done"
                )
            if args.delete_old and not c.failed:
                marker = m.delete_old_marker()
    except redis.RedisError as e:
        raise StateError(
            f"migrating state in Redis at {nodes.shown} failed: {type(e).__name__}: {e} "
            "(nothing is lost: run the command again; what was copied is kept)"
        ) from None
    finally:
        nodes.close()
    would = "would be " if args.dry_run else ""
    print(f"namespace {namespace} in {where}")
    if args.dry_run:
        print("dry run: nothing was changed")
    print(f"  old-layout records found: {c.found:,}")
    print(f"  {would}copied: {c.copied:,}")
    print(f"  already at the new name (kept): {c.already:,}")
    if c.skipped:
        print(f"  skipped (not a state record, or expired meanwhile): {c.skipped:,}")
    if args.delete_old:
        print(
            f"  old names {would}deleted: {c.deleted:,}"
            + (f" (and the old epoch marker {namespace}:{OLD_EPOCH})" if marker else "")
        )
    elif c.found:
        print("  old names kept (--delete-old deletes them once their copies exist)")
    if args.dry_run and c.examples:
        print("examples:")
        for old, new in c.examples:
            print(f"  {old} -> {new}")
    if c.failed:
        for line in c.errors:
            print(f"  failed: {line}")
        raise StateError(
            f"{c.failed} name(s) could not be copied or deleted in Redis at {nodes.shown}; "
            "run the command again (what was copied is kept)"
        )
    return 0
