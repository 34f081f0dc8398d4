"""The Redis state store: one pipelined round trip per node to load a tick's missing keys, one
per node of conditional writes per commit cycle — on one node, a Sentinel-managed master, or a
Redis Cluster (routing: :mod:`stream_lstm.stores.redis_nodes`).

Key layout (docs/scaling.md says why). Every entity key falls in one of :data:`BUCKETS` buckets
(CRC16 of the key, modulo 1,024), and the bucket is the Redis Cluster hash tag:

- ``<namespace>:<model version>:{s<bucket>}:<entity key>`` — a key's record;
- ``<namespace>:epoch:{s<bucket>}`` — the bucket's epoch marker;
- ``<namespace>:applied:{s<bucket>}:<topic id>:<partition>`` — with exactly-once processing, the
  input offset up to which every committed event's state is stored (the bucket of
  ``<topic id>:<partition>``);
- ``<namespace>:versions`` — the model versions that have written state, so a new version can
  find the previous one's records to rebuild from.

A bucket's records and its marker share one slot, so each write script touches ONE slot (what a
cluster requires). A commit cycle sends one script per bucket it touches (on a single node or a
Sentinel master, the buckets are packed ``chunk`` keys per script), grouped into one pipeline
per node. A hot input partition's keys spread over all buckets, so over all shards; resharding
moves buckets whole.

The write script refuses to replace a record whose stored ``last_offset`` is newer than the
one being written (in the same partition of the same topic; by event time when the key moved):
a worker that lost its partitions (a zombie) cannot overwrite the state that the new owner has
already advanced.

The epoch markers are set once per namespace: every load reads and every write script checks
the marker of the bucket it touches, so a store that lost its data under a running worker
(FLUSHDB, a restart without persistence, a shard lost with its replicas) is noticed, logged and
counted, and the worker rewrites every key it holds in full instead of patching deltas into
records that are gone.

Durability across a failover: with ``min_replicas`` N > 0 every node's pipeline of writes ends
with ``WAIT N timeout`` on the same connection; fewer acknowledgements fail the save (the
caller retries it; offsets stay uncommitted), so a master killed with -9 and replaced by its
replica has every state behind a committed offset.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import redis.sentinel
from redis.crc import key_slot

from stream_lstm.errors import ConfigError, StateError
from stream_lstm.stores.base import SaveResult, newer
from stream_lstm.stores.record import (
    HEADER,
    HEADER_V3,
    OFFSET_POS,
    PARTITION_POS,
    TOPIC_ID_POS,
    TS_POS,
    Layout,
    Snapshot,
)
from stream_lstm.stores.redis_nodes import (
    SINGLE,
    Nodes,
    data_credentials,
    open_nodes,
    resolve,
    retryable,
)

log = logging.getLogger(__name__)

BUCKETS = 1024
TAGS = [f"{{s{b}}}" for b in range(BUCKETS)]
TAG_SLOT = [key_slot(t.encode()) for t in TAGS]


def bucket_of(key: str) -> int:
    return binascii.crc_hqx(key.encode(), 0) % BUCKETS


# KEYS: per group of records (one bucket, or on one node several), the bucket's epoch marker and
# then the group's record keys. ARGV: TTL ms (0 = none), record size, fixed-part size, bytes of
# a ring row, the number of groups G; per group its record count and the epoch this worker knows;
# then per record the fixed part (header, h, c) and the new ring rows, each (u16 position, row).
# A group whose marker is not the epoch given is not written (the store was wiped: the caller
# finds out and rewrites every key it holds in full). Per record, the rule of
# stores.record.write_refused: same partition and topic → refused when the stored offset is
# newer; moved → refused when the stored event time is newer. An SLS3 record is upgraded in
# place; a record of another size is replaced by a zero-filled one before it is patched.
# Returns {records written, refused record indices (1-based), wiped group indices}.
WRITE_IF_NOT_OLDER = f"""
local ttl, size, fixed, rb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local ng = tonumber(ARGV[5])
local hdr, v3, z16 = {HEADER.itemsize}, {HEADER_V3.itemsize}, string.rep('\\0', 16)
local written, refused, wiped = 0, {{}}, {{}}
local ki, ai, ri = 1, 6 + 2 * ng, 0
for g = 1, ng do
  local n = tonumber(ARGV[4 + 2 * g])
  local ekey = KEYS[ki]
  ki = ki + 1
  if redis.call('GET', ekey) ~= ARGV[5 + 2 * g] then
    wiped[#wiped + 1] = g
    ki, ai, ri = ki + n, ai + 2 * n, ri + n
  else
    for _ = 1, n do
      local k, head, rows = KEYS[ki], ARGV[ai], ARGV[ai + 1]
      ki, ai, ri = ki + 1, ai + 2, ri + 1
      local cur = redis.call('GETRANGE', k, 0, hdr - 1)
      local len = #cur
      if len > 0 then len = redis.call('STRLEN', k) end
      local magic = string.sub(cur, 1, 4)
      if magic == 'SLS3' and len == size - 16 then
        local rec = redis.call('GET', k)
        redis.call('SET', k, 'SLS4' .. string.sub(rec, 5, v3) .. z16 .. string.sub(rec, v3 + 1),
          'KEEPTTL')
        cur, len, magic = string.sub(redis.call('GETRANGE', k, 0, hdr - 1), 1, hdr), size, 'SLS4'
      end
      local tc = nil
      if magic == 'SLS4' and #cur == hdr then tc = string.sub(cur, {TOPIC_ID_POS + 1}, hdr)
      elseif magic == 'SLS3' and #cur >= v3 then tc = z16 end
      local refuse = false
      if tc then
        local tn = string.sub(head, {TOPIC_ID_POS + 1}, hdr)
        local same = string.sub(cur, {PARTITION_POS + 1}, {PARTITION_POS + 4})
          == string.sub(head, {PARTITION_POS + 1}, {PARTITION_POS + 4})
          and (tc == tn or tc == z16 or tn == z16)
        local at = {OFFSET_POS + 1}
        if not same then at = {TS_POS + 1} end
        refuse = struct.unpack('<i8', cur, at) > struct.unpack('<i8', head, at)
      end
      if refuse then
        refused[#refused + 1] = ri
      else
        if len ~= size then
          redis.call('SET', k, string.rep('\\0', size))
        end
        redis.call('SETRANGE', k, 0, head)
        local o = 1
        while o < #rows do
          local pos = struct.unpack('<I2', rows, o)
          redis.call('SETRANGE', k, fixed + pos * rb, string.sub(rows, o + 2, o + 1 + rb))
          o = o + 2 + rb
        end
        if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
        written = written + 1
      end
    end
  end
end
return {{written, refused, wiped}}
"""
WRITE_SHA = hashlib.sha1(WRITE_IF_NOT_OLDER.encode()).hexdigest()

# KEYS[1]: a partition's applied offset (exactly-once); ARGV[1]: an offset. Raised, never
# lowered: a late write of an older cycle (a zombie's) cannot move it back.
RAISE_MARK = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"""

# One pipeline per node per commit cycle, unless a cycle is huge (a cold start with 100,000s of
# keys): then every 16,384 keys, so the commands never hold hundreds of megabytes at once.
MAX_KEYS_PER_ROUND_TRIP = 16_384
ATTEMPTS = 6  # per load or save, on MOVED / ASK / TRYAGAIN / CLUSTERDOWN / a lost node …
BACKOFF_S = 0.05  # … doubling between attempts (~1.6 s in all); then StateError, and the
# caller's retry (RedisRetry: the worker is unready, offsets stay uncommitted) takes over


class ReplicasMissing(redis.RedisError):
    """Fewer replicas than ``min_replicas`` acknowledged a pipeline's writes in time."""


@dataclass
class Call:
    """One command of a round: the slot it touches (-1: any), its arguments, and the buckets
    (with the indices of their keys in the caller's list) it covers."""

    slot: int
    args: tuple[object, ...]
    groups: list[tuple[int, list[int]]]
    nkeys: int


class RedisStateStore:
    def __init__(
        self,
        url: str,
        namespace: str,
        layout: Layout,
        *,
        ttl_ms: int = 7 * 86_400_000,
        chunk: int = 512,
        socket_timeout_s: float = 5.0,
        min_replicas: int | None = None,
        wait_timeout_s: float = 2.0,
        on_rtt: Callable[[str, float], None] | None = None,
    ) -> None:
        if "{" in namespace or "}" in namespace:
            raise ConfigError(
                f"--namespace {namespace!r}: braces are reserved for the Redis Cluster hash tag"
            )
        # a pipeline ending in WAIT must not time out on the socket before WAIT answers
        socket_timeout_s = max(socket_timeout_s, wait_timeout_s + 2.0)
        self.nodes: Nodes = open_nodes(url, socket_timeout_s)
        self.url_shown = self.nodes.shown
        self._has_password = data_credentials(url)
        self.namespace = namespace
        self.layout = layout
        self.version = layout.version
        self.ttl_ms = ttl_ms
        self.chunk = chunk
        self.on_rtt = on_rtt
        self.min_replicas_asked = min_replicas
        self.min_replicas = min_replicas or 0
        self.wait_timeout_ms = max(1, int(wait_timeout_s * 1000))
        self.previous_version: str | None = None
        self.versions_key = f"{namespace}:versions"
        # the buckets' epoch markers, as this worker knows them
        self.epochs: list[str] = [""] * BUCKETS
        self._wiped = False  # a load or a save found a marker gone or changed
        self._executor: ThreadPoolExecutor | None = None
        self._stale = False  # the last round failed: read the slot map first in the next
        self.replicas_short = False  # fewer replicas than min_replicas at start (/readyz)
        self._resolved = False  # peek: the nodes resolved (connect() does it for the worker)

    @property
    def mode(self) -> str:
        return self.nodes.mode

    # -- start-up ----------------------------------------------------------------------------
    def connect(self, retry_s: float = 0.0) -> None:
        """Reach Redis (retrying up to ``retry_s``), load the script, register this model
        version, adopt the epoch markers; decide how many replicas each write waits for."""
        deadline = time.monotonic() + retry_s
        delay = 0.2
        while True:
            try:
                self.nodes = resolve(self.nodes)
                self._resolved = True
                for addr in self.nodes.masters():
                    self.nodes.client(addr).script_load(WRITE_IF_NOT_OLDER)
                break
            except TypeError as e:  # an unknown URL parameter reaches the connection's init
                name = str(e).partition("unexpected keyword argument ")[2].strip("'") or "?"
                raise ConfigError(
                    f"--redis {self.url_shown}: the URL parameter {name!r} is not one redis-py "
                    "knows (e.g. password, username, db, ssl_cert_reqs, health_check_interval); "
                    "parameter names are case-sensitive"
                ) from None
            except redis.sentinel.MasterNotFoundError as e:
                if any(w in str(e) for w in ("AuthenticationError", "NOAUTH", "WRONGPASS")):
                    raise StateError(
                        f"the Sentinels of {self.url_shown} refused the credentials: give "
                        "theirs as ?sentinel_password=… (and ?sentinel_username=…) in the URL"
                    ) from None
                if time.monotonic() >= deadline:
                    hint = "" if retry_s else " (set --redis-connect-timeout to wait for it)"
                    service = getattr(self.nodes, "service", "?")
                    raise StateError(
                        f"no Sentinel of {self.url_shown} names a master for service "
                        f"{service!r}: check the service name, and that the Sentinels run and "
                        f"monitor it{hint}"
                    ) from None
            except (redis.AuthenticationError, redis.ResponseError) as e:
                auth = isinstance(e, redis.AuthenticationError) or any(
                    w in str(e) for w in ("NOAUTH", "WRONGPASS", "NOPERM")
                )
                if auth and not self._has_password:
                    raise StateError(
                        f"Redis at {self.url_shown} needs a password or ACL user in the URL "
                        f"(redis://user:password@host:port/db): {e}"
                    ) from None
                if auth:
                    raise StateError(
                        f"Redis at {self.url_shown} refused the credentials: {e}"
                    ) from None
                if self.mode == "sentinel" and "unknown command" in str(e).lower():
                    raise StateError(
                        f"--redis {self.url_shown}: the hosts of a redis+sentinel:// URL must be "
                        f"Sentinels (redis-server --sentinel), not data nodes: {e}"
                    ) from None
                if not retryable(e) or time.monotonic() >= deadline:
                    raise StateError(f"Redis at {self.url_shown}: {e}") from None
            except redis.RedisError as e:
                if time.monotonic() >= deadline:
                    hint = "" if retry_s else " (set --redis-connect-timeout to wait for it)"
                    raise StateError(f"cannot reach Redis at {self.url_shown}: {e}{hint}") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        created = self._resolve_epochs(range(BUCKETS))
        self.previous_version = self._register_version()
        self._decide_replicas()
        log.info(
            "state in %s (%s): epoch markers %s, writes wait for %d replica(s)",
            self.nodes.describe(), self.mode,
            f"new for {created} of {BUCKETS} buckets" if created else "found",
            self.min_replicas,
        )  # fmt: skip

    def _decide_replicas(self) -> None:
        try:
            fewest = self.nodes.replicas()
        except redis.RedisError as e:
            log.warning("could not count the replicas (%s)", e)
            fewest = 0
        if self.min_replicas_asked is None:
            # the default: wait for one replica where every master has one (cluster, Sentinel)
            self.min_replicas = 1 if self.mode != SINGLE and fewest >= 1 else 0
            if self.mode != SINGLE and fewest == 0:
                log.warning(
                    "Redis %s: a master has no replica, so writes wait for none; a master "
                    "lost with -9 loses the state written since its last fsync",
                    self.url_shown,
                )
        elif self.min_replicas > fewest:
            self.replicas_short = True
            log.warning(
                "--redis-min-replicas %d but a master of %s has %d replica(s) now: commit "
                "cycles will fail (and the worker go unready) until enough replicas are up",
                self.min_replicas, self.url_shown, fewest,
            )  # fmt: skip

    # -- the epoch markers: detect a wiped store (FLUSHDB, a restart without persistence) ------
    def _epoch_key(self, bucket: int) -> str:
        return f"{self.namespace}:epoch:{TAGS[bucket]}"

    def _resolve_epochs(self, buckets: Sequence[int]) -> int:
        """Adopt each bucket's marker, creating the ones that are missing; returns how many."""
        proposal = uuid.uuid4().hex
        made = self._round(
            "setting the epoch markers in",
            [
                Call(TAG_SLOT[b], ("SET", self._epoch_key(b), proposal, "NX"), [], 1)
                for b in buckets
            ],
        )
        seen = self._round(
            "reading the epoch markers in",
            [Call(TAG_SLOT[b], ("GET", self._epoch_key(b)), [], 1) for b in buckets],
        )
        for b, value in zip(buckets, seen, strict=True):
            self.epochs[b] = value.decode() if isinstance(value, bytes) else str(value)
        return sum(1 for m in made if m)

    def _lost_epochs(self, lost: dict[int, object]) -> None:
        """Markers that are not the ones this worker knows: those buckets were wiped (or another
        worker saw that first and set new markers). Adopt them; the engine learns of it through
        :meth:`wiped` and rewrites what it holds. All markers are read first, so that a shard
        lost as a whole is one incident (not one per bucket as the keys come by)."""
        try:
            lost = {**self._sweep_markers(), **lost}
        except StateError as e:
            log.warning("could not read every epoch marker (%s); adopting those seen", e)
        created = self._resolve_epochs(sorted(lost))
        self._wiped = True
        gone = sum(1 for v in lost.values() if v is None)
        log.error(
            "state store %s lost data under namespace %s: the epoch markers of %d bucket(s) were "
            "%s (%d set again by this worker): keys not cached by a worker restart from zero "
            "state",
            self.url_shown, self.namespace, len(lost),
            "gone" if gone == len(lost) else f"changed or gone ({gone} gone)", created,
        )  # fmt: skip

    def wiped(self) -> bool:
        """True once after a load or save found the store wiped."""
        w, self._wiped = self._wiped, False
        return w

    def use_layout(self, layout: Layout) -> None:
        """Store a new model version's states from now on (a hot model switch): register the
        version, so its keys fall back to the records of the one before."""
        previous = self._register_version(layout.version)
        self.layout, self.version, self.previous_version = layout, layout.version, previous

    def _register_version(self, version: str | None = None) -> str | None:
        """Append ``version`` (default: this store's) to the version list; returns the last
        other version that wrote state before it."""
        version = version or self.version
        slot = key_slot(self.versions_key.encode())
        (raw,) = self._round(
            "registering the model version in",
            [Call(slot, ("LRANGE", self.versions_key, 0, -1), [], 0)],
        )
        seen = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        if not seen or seen[-1] != version:
            self._round(
                "registering the model version in",
                [Call(slot, ("RPUSH", self.versions_key, version), [], 0)],
            )
        older = [v for v in seen if v != version]
        return older[-1] if older else None

    def record_key(self, key: str, version: str | None = None) -> str:
        return f"{self.namespace}:{version or self.version}:{TAGS[bucket_of(key)]}:{key}"

    # -- grouping keys into calls ----------------------------------------------------------
    def _calls(self, keys: Sequence[str], limit: int) -> list[list[tuple[int, list[int]]]]:
        """Keys grouped by bucket, the groups packed into calls of at most ``limit`` keys: one
        bucket per call in a cluster (a call stays in one slot), several on one node."""
        by_bucket: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_bucket.setdefault(bucket_of(k), []).append(i)
        calls: list[list[tuple[int, list[int]]]] = []
        size = limit  # keys in the last call (full: start a new one)
        for b, idx in by_bucket.items():
            for s in range(0, len(idx), limit):
                part = idx[s : s + limit]
                if self.nodes.cross_slot and size + len(part) <= limit:
                    calls[-1].append((b, part))
                    size += len(part)
                else:
                    calls.append([(b, part)])
                    size = len(part)
        return calls

    def _slot(self, groups: list[tuple[int, list[int]]]) -> int:
        return TAG_SLOT[groups[0][0]] if not self.nodes.cross_slot else -1

    # -- the two round trips -----------------------------------------------------------------
    def load(self, keys: Sequence[str]) -> list[bytes | None]:
        """Records of ``keys``: this version's, else the previous version's, else None.

        When both exist, the one that has seen the later offset wins: after a switch back to a
        version (A → B → A), A's old records are stale and B's must be rebuilt from instead."""
        if not keys:
            return []
        t0 = time.perf_counter()
        prev = self.previous_version
        calls = []
        for groups in self._calls(keys, 4 * self.chunk):
            names = [self._epoch_key(b) for b, _ in groups]
            idx = [i for _, part in groups for i in part]
            names += [self.record_key(keys[i]) for i in idx]
            if prev:
                names += [self.record_key(keys[i], prev) for i in idx]
            calls.append(Call(self._slot(groups), ("MGET", *names), groups, len(idx)))
        replies = self._round("loading state from", calls)
        self._rtt("load", t0)
        out: list[bytes | None] = [None] * len(keys)
        lost: dict[int, object] = {}
        for call, values in zip(calls, replies, strict=True):
            ng, n = len(call.groups), call.nkeys
            for (b, _), seen in zip(call.groups, values[:ng], strict=True):
                if seen is None or seen.decode() != self.epochs[b]:
                    lost[b] = seen
            idx = [i for _, part in call.groups for i in part]
            cur = values[ng : ng + n]
            old = values[ng + n :] if prev else [None] * n
            for i, c, p in zip(idx, cur, old, strict=True):
                out[i] = newer(c, p)
        if lost:
            self._lost_epochs(lost)
        return out

    def peek(self, keys: Sequence[str]) -> list[bytes | None]:
        """Records of ``keys`` for a query (``stream-lstm latest``, the worker's ``/latest``):
        this version's, else the newest other version's registered (as :meth:`load` falls
        back). Read-only: no epoch marker is read or set, no version registered, so a query
        never changes the store; safe on its own instance beside a running worker."""
        if not keys:
            return []
        if not self._resolved:
            try:
                self.nodes = resolve(self.nodes)
            except redis.RedisError as e:
                raise StateError(f"cannot reach Redis at {self.url_shown}: {e}") from None
            self._resolved = True
        slot = key_slot(self.versions_key.encode())
        (raw,) = self._round(
            "reading the model versions in",
            [Call(slot, ("LRANGE", self.versions_key, 0, -1), [], 0)],
        )
        older = [
            x
            for x in (v.decode() if isinstance(v, bytes) else str(v) for v in raw)
            if x != self.version
        ]
        prev = older[-1] if older else None
        calls = []
        for groups in self._calls(keys, 4 * self.chunk):
            idx = [i for _, part in groups for i in part]
            names = [self.record_key(keys[i]) for i in idx]
            names += [self.record_key(keys[i], prev) for i in idx] if prev else []
            calls.append(Call(self._slot(groups), ("MGET", *names), groups, len(idx)))
        out: list[bytes | None] = [None] * len(keys)
        for call, values in zip(calls, self._round("reading state from", calls), strict=True):
            idx = [i for _, part in call.groups for i in part]
            n = len(idx)
            old = values[n:] if prev else [None] * n
            for i, c, p in zip(idx, values[:n], old, strict=True):
                out[i] = newer(c, p)
        return out

    def save(self, snap: Snapshot) -> SaveResult:
        """Conditional delta writes: one pipeline per node (``chunk`` keys per script call),
        ended by ``WAIT`` when writes must reach replicas.

        With no keys, only checks the epoch markers (an idle worker still notices a wipe)."""
        result = SaveResult()
        keys = snap.keys
        if not keys:
            self._check_markers()
            result.wiped = self._wiped
            return result
        t0 = time.perf_counter()
        lay = snap.layout  # the snapshot's own (a model switch may have moved the store on)
        fixed_parts, new_rows = snap.blobs()
        calls = []
        for groups in self._calls(keys, self.chunk):
            names, counts, recs = [], [], []
            for b, part in groups:
                names.append(self._epoch_key(b))
                prefix = f"{self.namespace}:{lay.version}:{TAGS[b]}:"  # (= record_key's)
                names += [prefix + keys[i] for i in part]
                counts += [len(part), self.epochs[b]]
                recs += [x for i in part for x in (fixed_parts[i], new_rows[i])]
            args = (
                "EVALSHA", WRITE_SHA, len(names), *names,
                self.ttl_ms, lay.record_size, lay.fixed_size, lay.row_bytes, len(groups),
                *counts, *recs,
            )  # fmt: skip
            calls.append(Call(self._slot(groups), args, groups, sum(len(p) for _, p in groups)))
        replies = self._round("writing state to", calls, wait=self.min_replicas)
        self._rtt("save", t0)
        lost: dict[int, object] = {}
        for call, (written, refused, wiped) in zip(calls, replies, strict=True):
            idx = [i for _, part in call.groups for i in part]
            result.written += int(written)
            result.refused += [keys[idx[int(r) - 1]] for r in refused]
            for g in wiped:
                lost[call.groups[int(g) - 1][0]] = None
        if lost:
            result.wiped = True
            self._lost_epochs(lost)
        return result

    # -- applied offsets (exactly-once: stores.base, clause 6) --------------------------------
    def _mark(self, topic_id: bytes, partition: int) -> tuple[str, int]:
        b = bucket_of(f"{topic_id.hex()}:{partition}")
        return f"{self.namespace}:applied:{TAGS[b]}:{topic_id.hex()}:{partition}", TAG_SLOT[b]

    def load_marks(self, topic_id: bytes, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's applied offset, for those that have one."""
        marks = [self._mark(topic_id, p) for p in partitions]
        calls = [Call(slot, ("GET", name), [], 1) for name, slot in marks]
        replies = self._round("reading applied offsets from", calls)
        return {p: int(v) for p, v in zip(partitions, replies, strict=True) if v is not None}

    def save_marks(self, topic_id: bytes, marks: dict[int, int]) -> None:
        """Raise each partition's applied offset to the one given (never lower it)."""
        if not marks:
            return
        calls = []
        for p, offset in marks.items():
            name, slot = self._mark(topic_id, p)
            calls.append(Call(slot, ("EVAL", RAISE_MARK, 1, name, offset), [], 1))
        self._round("writing applied offsets to", calls, wait=self.min_replicas)

    def _check_markers(self) -> None:
        lost = self._sweep_markers()
        if lost:
            self._lost_epochs(lost)

    def _sweep_markers(self) -> dict[int, object]:
        """Every bucket whose marker is not the one this worker knows (read in one round)."""
        calls = [
            Call(TAG_SLOT[b], ("GET", self._epoch_key(b)), [(b, [])], 0) for b in range(BUCKETS)
        ]
        if self.nodes.cross_slot:  # one MGET on one node
            names = [self._epoch_key(b) for b in range(BUCKETS)]
            calls = [Call(-1, ("MGET", *names), [], 0)]
        replies = self._round("checking the epoch markers in", calls)
        seen = replies[0] if self.nodes.cross_slot else replies
        return {
            b: v
            for b, v in enumerate(seen)
            if not isinstance(v, bytes) or v.decode() != self.epochs[b]
        }

    # -- one round: a pipeline per node, with redirections and retries ----------------------
    def _round(self, what: str, calls: list[Call], *, wait: int = 0) -> list[Any]:
        """Send ``calls`` (one pipeline per node, at most MAX_KEYS_PER_ROUND_TRIP keys each),
        following ASK, retrying MOVED / TRYAGAIN / CLUSTERDOWN / READONLY / lost nodes after a
        fresh slot map, up to ATTEMPTS times; a reply per call, in order. With ``wait`` > 0 each
        pipeline ends with ``WAIT wait timeout``, and fewer acknowledgements fail its calls."""
        replies: list[object] = [None] * len(calls)
        pending = list(range(len(calls)))
        ask: dict[int, str] = {}  # call → the node an ASK redirection named
        last: BaseException | None = None
        for attempt in range(ATTEMPTS):
            if attempt or self._stale:  # (the last round failed: its map may be old, too)
                if attempt:
                    time.sleep(BACKOFF_S * 2 ** (attempt - 1))
                try:
                    self.nodes.refresh()
                    self._stale = False
                except redis.RedisError as e:
                    last = e
                    continue
            failed: list[int] = []
            try:
                by_node: dict[str, list[int]] = {}
                for i in pending:
                    slot = calls[i].slot
                    addr = ask.get(i) or (self.nodes.node_of(slot) if slot >= 0 else SINGLE)
                    if slot < 0 and self.nodes.mode == "cluster":
                        addr = self.nodes.masters()[0]
                    by_node.setdefault(addr, []).append(i)
            except redis.RedisError as e:  # a slot nobody serves
                last = e
                continue
            jobs = [(addr, part) for addr, idx in by_node.items() for part in _parts(idx, calls)]
            if len(by_node) > 1:  # the masters work at once: one pipeline each, in parallel
                pool = self._pool()
                outcomes = list(
                    pool.map(lambda j: self._send(j[0], j[1], calls, replies, ask, wait), jobs)
                )
            else:
                outcomes = [self._send(a, part, calls, replies, ask, wait) for a, part in jobs]
            for again, err in outcomes:
                if err is not None:
                    last = err
                    failed += again
            if not failed:
                return replies
            if isinstance(last, ReplicasMissing):
                break  # replicas do not come back in a second: the caller retries, unready
            pending = failed
        assert last is not None
        self._stale = True
        log.warning(
            "%s Redis at %s: giving up after %d attempt(s)", what, self.url_shown, attempt + 1
        )
        raise StateError(
            f"{what} Redis at {self.url_shown} failed: {type(last).__name__}: {last}"
        ) from None

    def _send(
        self,
        addr: str,
        idx: list[int],
        calls: list[Call],
        replies: list[object],
        ask: dict[int, str],
        wait: int,
    ) -> tuple[list[int], BaseException | None]:
        """:meth:`_send_once`; calls refused for want of the script (a restarted node or a new
        master: the script was just loaded again) are sent again at once, rather than spending
        one of the round's attempts on it."""
        again, err = self._send_once(addr, idx, calls, replies, ask, wait)
        if again and isinstance(err, redis.exceptions.NoScriptError):
            again, err = self._send_once(addr, again, calls, replies, ask, wait)
        return again, err

    def _send_once(
        self,
        addr: str,
        idx: list[int],
        calls: list[Call],
        replies: list[object],
        ask: dict[int, str],
        wait: int,
    ) -> tuple[list[int], BaseException | None]:
        """One pipeline to one node; fills ``replies``. Returns the calls to retry and why
        (every call is idempotent: a write applied twice leaves the same record)."""
        client = self.nodes.client(addr)
        pipe = client.pipeline(transaction=False)
        for i in idx:
            if i in ask:
                pipe.execute_command("ASKING")
            pipe.execute_command(*calls[i].args)
        if wait:
            pipe.execute_command("WAIT", wait, self.wait_timeout_ms)
        try:
            out = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            if not retryable(e):
                raise StateError(
                    f"Redis at {self.url_shown} ({addr}): {type(e).__name__}: {e}"
                ) from None
            client.connection_pool.disconnect()
            return idx, e
        acked: object = out.pop() if wait else None
        error: BaseException | None = None
        failed: list[int] = []
        pos = 0
        for i in idx:
            if i in ask:
                pos += 1  # the ASKING reply
            r = out[pos]
            pos += 1
            if isinstance(r, redis.exceptions.NoScriptError):
                client.script_load(WRITE_IF_NOT_OLDER)  # a new master or a restarted node
            elif isinstance(r, redis.exceptions.MovedError):
                ask.pop(i, None)
            elif isinstance(r, redis.exceptions.AskError):
                ask[i] = f"{r.host}:{r.port}"
            elif isinstance(r, BaseException):
                if not retryable(r):
                    raise StateError(
                        f"Redis at {self.url_shown} ({addr}): {type(r).__name__}: {r}"
                    ) from None
            else:
                ask.pop(i, None)
                replies[i] = r
                continue
            error = r
            failed.append(i)
        if not wait:
            return failed, error
        count = acked if isinstance(acked, int) else -1  # (an error reply: not a count)
        confirmed = count >= wait
        if error is not None:  # the calls that went through are done only if WAIT says so
            return (failed if confirmed else idx), error
        if isinstance(acked, BaseException):  # e.g. WAIT on a master demoted to a replica
            return idx, redis.exceptions.ReadOnlyError(f"WAIT on {addr}: {acked}")
        if count < wait:
            return idx, ReplicasMissing(
                f"WAIT: {acked} of {wait} replica(s) of {addr} acknowledged the writes "
                f"within {self.wait_timeout_ms} ms"
            )
        self.replicas_short = False
        return [], None

    def _pool(self) -> ThreadPoolExecutor:
        """Threads that send one pipeline per master at once (socket waits release the GIL)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(16, thread_name_prefix="redis-node")
        return self._executor

    def ping(self) -> bool:
        try:
            return all(bool(self.nodes.client(a).ping()) for a in self.nodes.masters())
        except redis.RedisError:
            return False

    def _rtt(self, op: str, t0: float) -> None:
        if self.on_rtt is not None:
            self.on_rtt(op, time.perf_counter() - t0)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self.nodes.close()


def _parts(idx: list[int], calls: list[Call]) -> list[list[int]]:
    """``idx`` split so that one pipeline carries at most MAX_KEYS_PER_ROUND_TRIP keys."""
    parts: list[list[int]] = [[]]
    n = 0
    for i in idx:
        if parts[-1] and n + calls[i].nkeys > MAX_KEYS_PER_ROUND_TRIP:
            parts.append([])
            n = 0
        parts[-1].append(i)
        n += calls[i].nkeys
    return parts
