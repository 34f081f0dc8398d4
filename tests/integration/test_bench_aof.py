"""The bench's Redis AOF handling on a real redis-server: the rewrite after the warm-up is
done and waited for, a Redis without AOF is left alone, and a user without the right to
rewrite gets a warning at once (not a five-minute wait)."""

from __future__ import annotations

import io

import redis
from rich.console import Console

from stream_lstm.benchmark.run import aof_rewrites, settle_aof
from tests.integration.conftest import Services, unique


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200), out


def test_settle_aof_rewrites_and_waits_or_leaves_alone(services: Services) -> None:
    url = services.redis_url
    r = redis.Redis.from_url(url)
    was = r.config_get("appendonly")["appendonly"]
    try:
        r.config_set("appendonly", "yes")
        console, out = _console()
        settle_aof(url, console)  # (waits for the rewrite that turning AOF on starts, too)
        before = aof_rewrites(url)
        assert before is not None
        settle_aof(url, console)
        info = r.info("persistence")
        assert aof_rewrites(url) == before + 1, out.getvalue()
        assert not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
        assert "rewritten after the warm-up" in out.getvalue()

        r.config_set("appendonly", "no")
        n = aof_rewrites(url)
        console, out = _console()
        settle_aof(url, console)
        assert aof_rewrites(url) == n and out.getvalue() == ""
    finally:
        r.config_set("appendonly", was)
        r.close()


def test_settle_aof_without_the_right_to_rewrite_warns_at_once(services: Services) -> None:
    r = redis.Redis.from_url(services.redis_url)
    user = unique("bench-ro")
    was = r.config_get("appendonly")["appendonly"]
    r.config_set("appendonly", "yes")
    r.acl_setuser(user, enabled=True, passwords=["+pw"], commands=["+info", "-bgrewriteaof"])
    try:
        host, port = (
            r.connection_pool.connection_kwargs["host"],
            r.connection_pool.connection_kwargs["port"],
        )
        console, out = _console()
        settle_aof(f"redis://{user}:pw@{host}:{port}/0", console, timeout_s=5)
        said = out.getvalue()
        assert "could not rewrite" in said and "bgrewriteaof" in said.lower(), said
        assert "still running" not in said, "it kept retrying a refusal until its timeout"
    finally:
        r.acl_deluser(user)
        r.config_set("appendonly", was)
        r.close()
