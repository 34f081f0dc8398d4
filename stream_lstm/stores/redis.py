"""The Redis state store: one round trip to load a tick's missing keys, one pipelined round trip
of conditional writes per commit cycle.

Key names: ``<namespace>:<model version>:{<entity key>}`` — the braces are a Redis Cluster hash
tag, so one key's record lives in one slot. ``<namespace>:versions`` lists the model versions
that have written state, so a new version can find the previous one's records to rebuild from.

The write script refuses to replace a record whose stored ``last_offset`` is newer than the
one being written (in the same partition of the same topic; by event time when the key moved):
a worker that lost its partitions (a zombie) cannot overwrite the state that the new owner has
already advanced.

``<namespace>:epoch`` is a marker set once per namespace: every load reads it and every write
script checks it, so a store that lost its data under a running worker (FLUSHDB, a restart
without persistence) is noticed, logged and counted, and the worker rewrites every key it holds
in full instead of patching deltas into records that are gone. (The script touches the marker
and the records in one call: fine on one Redis node; Redis Cluster needs both in one slot.)
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence

import redis

from stream_lstm.errors import ConfigError, StateError
from stream_lstm.redact import redact_url, url_has_credentials
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

log = logging.getLogger(__name__)

# KEYS[1]: the namespace's epoch marker; KEYS[2..]: record keys. ARGV: the epoch this worker
# knows, TTL ms (0 = none), record size, fixed-part size, bytes of a ring row; then for KEYS[i]:
# ARGV[2 + 2i] the fixed part (header, h, c) and ARGV[3 + 2i] the new ring rows, each (u16
# position, row). Nothing is written when the marker is not the epoch given (the store was
# wiped: the caller finds out and rewrites every key it holds in full). Per record, the rule of
# stores.record.write_refused: same partition and topic → refused when the stored offset is
# newer; moved → refused when the stored event time is newer. An SLS3 record is upgraded in
# place; a record of another size is replaced by a zero-filled one before it is patched.
WRITE_IF_NOT_OLDER = f"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {{0, {{}}, 1}} end
local ttl, size, fixed, rb = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5])
local hdr, v3, z16 = {HEADER.itemsize}, {HEADER_V3.itemsize}, string.rep('\\0', 16)
local written = 0
local refused = {{}}
for i = 2, #KEYS do
  local k = KEYS[i]
  local head = ARGV[2 + 2 * i]
  local rows = ARGV[3 + 2 * i]
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
    refused[#refused + 1] = i - 1
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
return {{written, refused, 0}}
"""


# One round trip per commit cycle, unless a cycle is huge (a cold start with 100,000s of keys):
# then every 16,384 keys, so the commands never hold hundreds of megabytes at once.
MAX_KEYS_PER_ROUND_TRIP = 16_384


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
        on_rtt: Callable[[str, float], None] | None = None,
    ) -> None:
        self.url_shown = redact_url(url)
        self._has_password = url_has_credentials(url)
        self.namespace = namespace
        self.layout = layout
        self.version = layout.version
        self.ttl_ms = ttl_ms
        self.chunk = chunk
        self.on_rtt = on_rtt
        self.previous_version: str | None = None
        self.epoch_key = f"{namespace}:epoch"
        self.epoch = ""  # this namespace's epoch marker, as this worker knows it
        self._wiped = False  # a load or a save found the marker gone or changed
        try:
            self.client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
            )
        except (ValueError, TypeError) as e:
            # (redis-py's message can quote a piece of the password: never shown)
            raise ConfigError(
                f"--redis / STREAM_LSTM_REDIS {self.url_shown} is not a Redis URL redis-py can "
                f"read ({type(e).__name__}); the form is redis[s]://[user:password@]host:port/db, "
                "with / # ? @ in a password percent-encoded (%2F %23 %3F %40)"
            ) from None
        self._sha: str | None = None

    # -- start-up ----------------------------------------------------------------------------
    def connect(self, retry_s: float = 0.0) -> None:
        """Ping (retrying up to ``retry_s``), load the script, register this model version."""
        deadline = time.monotonic() + retry_s
        delay = 0.2
        while True:
            try:
                self.client.ping()
                break
            except TypeError as e:  # an unknown URL parameter reaches the connection's init
                m = re.search(r"unexpected keyword argument '([^']*)'", str(e))
                name = m.group(1) if m else "?"
                raise ConfigError(
                    f"--redis {self.url_shown}: the URL parameter {name!r} is not one redis-py "
                    "knows (e.g. password, username, db, ssl_cert_reqs, health_check_interval); "
                    "parameter names are case-sensitive"
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
                raise StateError(f"Redis at {self.url_shown}: {e}") from None
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if time.monotonic() >= deadline:
                    hint = "" if retry_s else " (set --redis-connect-timeout to wait for it)"
                    raise StateError(f"cannot reach Redis at {self.url_shown}: {e}{hint}") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._sha = self.client.script_load(WRITE_IF_NOT_OLDER)
        created = self._resolve_epoch()
        self.previous_version = self._register_version()
        log.info(
            "state epoch %s in %s (%s)", self.epoch, self.url_shown,
            "new: no marker was there" if created else "found",
        )  # fmt: skip

    # -- the epoch marker: detects a wiped store (FLUSHDB, a restart without persistence) ------
    def _resolve_epoch(self) -> bool:
        """Adopt the namespace's epoch marker, creating it if there is none (True then)."""
        created = bool(self.client.set(self.epoch_key, uuid.uuid4().hex, nx=True))
        raw = self.client.get(self.epoch_key)
        self.epoch = raw.decode() if isinstance(raw, bytes) else str(raw)
        return created

    def _lost_epoch(self, seen: object) -> None:
        """The marker is not the one this worker knows: the store was wiped (or another worker
        saw that first and set a new marker). Adopt the new epoch; the engine learns of it
        through :meth:`wiped` and rewrites what it holds."""
        old = self.epoch
        try:
            created = self._resolve_epoch()
        except redis.RedisError as e:
            raise StateError(f"re-creating the epoch marker in {self.url_shown}: {e}") from None
        self._wiped = True
        log.error(
            "state store %s lost its data under namespace %s (epoch marker %s is %s; now %s, "
            "%s): keys not cached by a worker restart from zero state",
            self.url_shown, self.namespace, old, "gone" if seen is None else "changed",
            self.epoch, "set by this worker" if created else "set by another worker",
        )  # fmt: skip

    def wiped(self) -> bool:
        """True once after a load or save found the store wiped."""
        w, self._wiped = self._wiped, False
        return w

    def use_layout(self, layout: Layout) -> None:
        """Store a new model version's states from now on (a hot model switch): register the
        version, so its keys fall back to the records of the one before."""
        try:
            previous = self._register_version(layout.version)
        except redis.RedisError as e:
            raise StateError(f"registering model version {layout.version}: {e}") from None
        self.layout, self.version, self.previous_version = layout, layout.version, previous

    def _register_version(self, version: str | None = None) -> str | None:
        """Append ``version`` (default: this store's) to the version list; returns the last
        other version that wrote state before it."""
        version = version or self.version
        key = f"{self.namespace}:versions"
        seen = [
            v.decode() if isinstance(v, bytes) else str(v) for v in self.client.lrange(key, 0, -1)
        ]
        if not seen or seen[-1] != version:
            self.client.rpush(key, version)
        older = [v for v in seen if v != version]
        return older[-1] if older else None

    def record_key(self, key: str, version: str | None = None) -> str:
        return f"{self.namespace}:{version or self.version}:{{{key}}}"

    # -- the two round trips -----------------------------------------------------------------
    def load(self, keys: Sequence[str]) -> list[bytes | None]:
        """Records of ``keys``: this version's, else the previous version's, else None.

        When both exist, the one that has seen the later offset wins: after a switch back to a
        version (A → B → A), A's old records are stale and B's must be rebuilt from instead."""
        if not keys:
            return []
        t0 = time.perf_counter()
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.epoch_key)
            for s in range(0, len(keys), 4 * self.chunk):
                pipe.mget([self.record_key(k) for k in keys[s : s + 4 * self.chunk]])
            if self.previous_version:
                for s in range(0, len(keys), 4 * self.chunk):
                    part = keys[s : s + 4 * self.chunk]
                    pipe.mget([self.record_key(k, self.previous_version) for k in part])
            epoch, *replies = pipe.execute()
        except redis.RedisError as e:
            raise StateError(f"loading state from Redis at {self.url_shown} failed: {e}") from None
        self._rtt("load", t0)
        if epoch is None or epoch.decode() != self.epoch:
            self._lost_epoch(epoch)
        n_cur = (len(keys) + 4 * self.chunk - 1) // (4 * self.chunk)
        cur = [v for part in replies[:n_cur] for v in part]
        if self.previous_version:
            prev = [v for part in replies[n_cur:] for v in part]
            return [newer(c, p) for c, p in zip(cur, prev, strict=True)]
        return cur

    def save(self, snap: Snapshot) -> SaveResult:
        """Conditional delta writes in one pipelined round trip (``chunk`` keys per call).

        With no keys, only checks the epoch marker (an idle worker still notices a wipe)."""
        result = SaveResult()
        keys = snap.keys
        t0 = time.perf_counter()
        lay = snap.layout  # the snapshot's own (a model switch may have moved the store on)
        common = (self.epoch, self.ttl_ms, lay.record_size, lay.fixed_size, lay.row_bytes)
        bounds = list(range(0, len(keys), self.chunk))
        for attempt in (1, 2):
            try:
                if not keys:
                    seen = self.client.get(self.epoch_key)
                    if not isinstance(seen, bytes) or seen.decode() != self.epoch:
                        self._lost_epoch(seen)
                        result.wiped = True
                    return result
                if self._sha is None:
                    self._sha = self.client.script_load(WRITE_IF_NOT_OLDER)
                pipe = self.client.pipeline(transaction=False)
                names = [self.record_key(k, lay.version) for k in keys]
                fixed_parts, new_rows = snap.blobs()
                replies = []
                for s in bounds:
                    e = s + self.chunk
                    args = [
                        x
                        for pair in zip(fixed_parts[s:e], new_rows[s:e], strict=True)
                        for x in pair
                    ]
                    pipe.evalsha(
                        self._sha, 1 + len(names[s:e]), self.epoch_key, *names[s:e], *common, *args
                    )
                    if len(pipe) * self.chunk >= MAX_KEYS_PER_ROUND_TRIP:
                        replies += pipe.execute()  # bound the memory of huge cycles
                replies += pipe.execute()
                break
            except redis.exceptions.NoScriptError:
                self._sha = None  # Redis restarted and lost its script cache: load it again
                if attempt == 2:
                    raise StateError("Redis keeps losing the state-write script") from None
            except redis.RedisError as e:
                raise StateError(
                    f"writing state to Redis at {self.url_shown} failed: {e}"
                ) from None
        self._rtt("save", t0)
        for s, (written, refused, wiped) in zip(bounds, replies, strict=True):
            result.written += int(written)
            result.refused += [keys[s + int(i) - 1] for i in refused]
            result.wiped = result.wiped or bool(wiped)
        if result.wiped:
            self._lost_epoch(None)
        return result

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _rtt(self, op: str, t0: float) -> None:
        if self.on_rtt is not None:
            self.on_rtt(op, time.perf_counter() - t0)

    def close(self) -> None:
        self.client.close()
