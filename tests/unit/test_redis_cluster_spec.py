"""Redis Cluster and Sentinel specs, config files, URLs, parsing and the stack flags: no Redis
process is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.cli import build_parser
from stream_lstm.commands._stack import stack_from_args
from stream_lstm.config import StackSettings, build_settings
from stream_lstm.errors import ConfigError, StackError
from stream_lstm.stack import Stack, cluster_detail
from stream_lstm.stack.redis_cluster import (
    ClusterSpec,
    NodeStatus,
    RedisCluster,
    RedisSentinel,
    SentinelSpec,
    TlsFiles,
    free_ports,
    parse_cluster_nodes,
    parse_info,
    quote_conf,
)

PORTS = (7000, 7001, 7002, 7003, 7004, 7005)


def conf_of(lines: list[str]) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition(" ") for line in lines)}


def test_cluster_spec_url_masters_and_bus_ports(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, ports=PORTS)
    assert spec.url == "redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/0"
    assert spec.masters == 3
    assert spec.master_ports == (7000, 7001, 7002)
    assert spec.cluster_bus_ports == tuple(p + 10000 for p in PORTS)
    assert "secret" not in repr(ClusterSpec(run_dir=tmp_path, ports=PORTS, password="secret"))
    nine = ClusterSpec(run_dir=tmp_path, ports=tuple(range(7000, 7009)), replicas=2, host="::1")
    assert nine.masters == 3 and nine.url.startswith("redis://::1:7000,")
    bare = ClusterSpec(run_dir=tmp_path, ports=(1, 2, 3), replicas=0)
    assert bare.masters == 3


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ports": PORTS[:4]}, "multiple of 2 ports and at least 3 masters"),
        ({"ports": PORTS[:2], "replicas": 0}, "at least 3 masters"),
        ({"ports": (7000, 7000, 7001, 7002, 7003, 7004)}, "must differ"),
        ({"ports": (*PORTS[:5], 70000)}, "outside 1..65535"),
        ({"ports": tuple(range(55600, 55606))}, "choose node ports <= 55535 or give bus_ports"),
        ({"ports": PORTS, "bus_ports": (1, 2, 3)}, "one cluster bus port per node"),
        ({"ports": PORTS, "bus_ports": (7005, 2, 3, 4, 5, 6)}, "node and bus ports must all"),
        ({"ports": PORTS, "replicas": -1}, ">= 0"),
        ({"ports": PORTS, "appendfsync": "sometimes"}, "appendfsync"),
        ({"ports": PORTS, "node_timeout_ms": 10}, "node_timeout_ms"),
    ],
)
def test_cluster_spec_refuses_bad_shapes(
    tmp_path: Path, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(StackError, match=message):
        ClusterSpec(run_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_high_free_ports_work_with_explicit_bus_ports(tmp_path: Path) -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12
    spec = ClusterSpec(run_dir=tmp_path, ports=ports[:6], bus_ports=ports[6:])
    assert spec.bus_port(ports[2]) == ports[8]


def test_cluster_node_config(tmp_path: Path) -> None:
    c = RedisCluster(ClusterSpec(run_dir=tmp_path, ports=PORTS, password='p w"\\x'))
    conf = conf_of(c._node_conf(7003))
    d = (tmp_path / "7003").absolute()
    assert conf["port"] == "7003" and conf["bind"] == "127.0.0.1"
    assert conf["dir"] == quote_conf(str(d))
    assert conf["cluster-enabled"] == "yes"
    assert conf["cluster-port"] == "17003"
    assert conf["cluster-config-file"] == quote_conf(str(d / "nodes.conf"))
    assert conf["cluster-node-timeout"] == "2000"
    assert conf["cluster-require-full-coverage"] == "no"
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert conf["save"] == '""'
    assert conf["requirepass"] == conf["masterauth"] == '"p w\\"\\\\x"'
    assert "{config-file}" in conf["proc-title-template"]
    assert c._argv(7003, "/usr/bin/redis-server") == [
        "/usr/bin/redis-server",
        str(d / "redis.conf"),
    ]
    assert "requirepass" not in conf_of(
        RedisCluster(ClusterSpec(run_dir=tmp_path, ports=PORTS))._node_conf(7000)
    )


def tls_files(d: Path, auth_clients: bool = True) -> TlsFiles:
    return TlsFiles(cert=d / "n.crt", key=d / "n.key", ca=d / "ca.crt", auth_clients=auth_clients)


def test_cluster_with_tls_serves_tls_only_and_links_over_tls(tmp_path: Path) -> None:
    tls = tls_files(tmp_path)
    spec = ClusterSpec(run_dir=tmp_path, ports=PORTS, password="pw", tls=tls)
    c = RedisCluster(spec)
    lines = c._node_conf(7001)
    conf = conf_of(lines)
    assert conf["port"] == "0" and conf["tls-port"] == "7001"
    assert conf["tls-cert-file"] == quote_conf(str((tmp_path / "n.crt").absolute()))
    assert conf["tls-key-file"] == quote_conf(str((tmp_path / "n.key").absolute()))
    assert conf["tls-ca-cert-file"] == quote_conf(str((tmp_path / "ca.crt").absolute()))
    assert conf["tls-auth-clients"] == "yes"
    assert conf["tls-cluster"] == conf["tls-replication"] == "yes"
    assert conf["cluster-port"] == "17001" and conf["requirepass"] == '"pw"'
    assert sum(line.startswith("port ") for line in lines) == 1
    query = f"ssl_ca_certs={tmp_path}/ca.crt&ssl_certfile={tmp_path}/n.crt"
    query += f"&ssl_keyfile={tmp_path}/n.key"
    assert spec.url == f"rediss://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/0?{query}"
    assert tls.url_query() == query
    assert tls.cli_args() == [
        "--tls", "--cacert", str(tmp_path / "ca.crt"),
        "--cert", str(tmp_path / "n.crt"), "--key", str(tmp_path / "n.key"),
    ]  # fmt: skip
    kw = c.client(7001).connection_pool.connection_kwargs
    assert (kw["ssl_ca_certs"], kw["ssl_certfile"], kw["ssl_keyfile"], kw["password"]) == (
        str(tmp_path / "ca.crt"), str(tmp_path / "n.crt"), str(tmp_path / "n.key"), "pw",
    )  # fmt: skip
    assert kw["ssl_cert_reqs"] == "required" and kw["port"] == 7001
    assert c.client(7001).connection_pool.connection_class.__name__ == "SSLConnection"
    no_client_certs = ClusterSpec(
        run_dir=tmp_path, ports=PORTS, tls=tls_files(tmp_path, auth_clients=False)
    )
    assert conf_of(RedisCluster(no_client_certs)._node_conf(7000))["tls-auth-clients"] == "no"
    # without TLS: the plain port only, no tls-* line, plain clients
    plain = RedisCluster(ClusterSpec(run_dir=tmp_path, ports=PORTS))
    assert not any(line.startswith("tls-") for line in plain._node_conf(7000))
    assert "ssl_certfile" not in plain.client(7000).connection_pool.connection_kwargs
    # recorded for `stack status`/`down` (paths only)
    tmp_path.mkdir(exist_ok=True)
    c._record()
    assert "pw" not in (tmp_path / "cluster.json").read_text()
    again = RedisCluster.recorded(tmp_path, password="pw")
    assert again is not None and again.spec.tls == tls
    plain._record()
    again = RedisCluster.recorded(tmp_path)
    assert again is not None and again.spec.tls is None


def test_node_that_never_ran_has_no_pid_and_cannot_be_killed(tmp_path: Path) -> None:
    c = RedisCluster(ClusterSpec(run_dir=tmp_path, ports=PORTS))
    assert c.pid() is None and c.node_pid(7000) is None and c.pids() == {}
    assert c.stop() is False
    with pytest.raises(StackError, match="is not running"):
        c.kill_node(7000)
    with pytest.raises(StackError, match="not one of"):
        c.pause_node(6999)
    with pytest.raises(StackError, match=r"served no slots|no cluster state"):
        c.wait_failover(7000, timeout_s=0.1)


def test_quote_conf_escapes() -> None:
    assert quote_conf("plain") == '"plain"'
    assert quote_conf('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


CLUSTER_NODES = """\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [10923->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
9fe0b4ca1a39c7e4d8a94c1c0bbbfe0d7a9bf6e3 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 disconnected 17
vars currentEpoch 5 lastVoteEpoch 0
"""


def test_parse_cluster_nodes() -> None:
    lines = {ln.address: ln for ln in parse_cluster_nodes(CLUSTER_NODES)}
    assert set(lines) == {f"127.0.0.1:3000{i}" for i in range(1, 6)}
    replica = lines["127.0.0.1:30004"]
    assert not replica.is_master and replica.master_id.startswith("e7d1") and not replica.slots
    assert len(lines["127.0.0.1:30002"].slots) == 5462
    assert len(lines["127.0.0.1:30003"].slots) == 5461  # the migrating slot is not counted twice
    assert "myself" in lines["127.0.0.1:30001"].flags
    dead = lines["127.0.0.1:30005"]
    assert dead.failed and dead.is_master and dead.slots == frozenset({17})


def test_parse_info() -> None:
    info = parse_info("# Cluster\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n")
    assert info == {"cluster_state": "ok", "cluster_slots_assigned": "16384"}


def test_node_status_up_and_stack_detail() -> None:
    def node(role: str, **kw: object) -> NodeStatus:
        base: dict[str, object] = dict(
            address="127.0.0.1:7000", port=7000, pid=1, role=role, slots=0, master_of=None,
            rss_bytes=None, cluster_ok=True,
        )  # fmt: skip
        return NodeStatus(**(base | kw))  # type: ignore[arg-type]

    assert cluster_detail(node("master", slots=5461)) == "redis-cluster master (5461 slots)"
    replica = node("replica", master_of="127.0.0.1:7001")
    assert cluster_detail(replica) == "redis-cluster replica of 127.0.0.1:7001"
    assert replica.up
    down = node("down", pid=None, slots=5461, cluster_ok=None)
    assert cluster_detail(down) == "redis-cluster node down (5461 slots not taken over)"
    assert not down.up
    assert cluster_detail(node("fail", pid=None, cluster_ok=None)) == "redis-cluster node failed"
    lonely = node("master", slots=10, cluster_ok=False)
    assert not lonely.up and cluster_detail(lonely).endswith(", cluster_state not ok")
    assert node("sentinel", cluster_ok=None).up


def test_sentinel_spec_url_and_validation(tmp_path: Path) -> None:
    spec = SentinelSpec(run_dir=tmp_path, data_ports=(6400, 6401), sentinel_ports=(1, 2, 3))
    assert spec.url == "redis+sentinel://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/stream-lstm"
    assert RedisSentinel(spec).data_ports == (6400, 6401)
    assert RedisSentinel(spec).url == spec.url
    for kw, message in (
        ({"data_ports": (6400,)}, "at least two data ports"),
        ({"sentinel_ports": (6400, 2, 3)}, "must all differ"),
        ({"sentinel_ports": ()}, "at least one sentinel"),
        ({"quorum": 4}, "quorum"),
        ({"service": "a b"}, "service name"),
        ({"down_after_ms": 5}, "down_after_ms"),
    ):
        base: dict[str, object] = {
            "run_dir": tmp_path, "data_ports": (6400, 6401), "sentinel_ports": (1, 2, 3),
        }  # fmt: skip
        with pytest.raises(StackError, match=message):
            SentinelSpec(**(base | kw))  # type: ignore[arg-type]


def test_sentinel_configs(tmp_path: Path) -> None:
    s = RedisSentinel(
        SentinelSpec(
            run_dir=tmp_path, data_ports=(6400, 6401), sentinel_ports=(26400, 26401, 26402),
            password="pw", service="svc",
        )
    )  # fmt: skip
    master, replica = s._node_conf(6400), s._node_conf(6401)
    assert not any(line.startswith("replicaof") for line in master)
    assert "replicaof 127.0.0.1 6400" in replica
    assert 'requirepass "pw"' in master and 'masterauth "pw"' in replica
    sentinel = s._node_conf(26401)
    assert "sentinel monitor svc 127.0.0.1 6400 2" in sentinel
    assert "sentinel down-after-milliseconds svc 1000" in sentinel
    assert "sentinel failover-timeout svc 5000" in sentinel
    assert 'sentinel auth-pass svc "pw"' in sentinel
    assert not any(line.startswith("requirepass") for line in sentinel)
    assert s._argv(26401, "rs")[-1] == "--sentinel"
    assert "--sentinel" not in s._argv(6400, "rs")
    assert s._password_for(26400) is None and s._password_for(6400) == "pw"


def test_sentinel_with_tls_and_a_sentinel_password(tmp_path: Path) -> None:
    tls = tls_files(tmp_path)
    spec = SentinelSpec(
        run_dir=tmp_path, data_ports=(6400, 6401), sentinel_ports=(26400, 26401, 26402),
        password="data-secret", sentinel_password="sentinel-secret", tls=tls,
    )  # fmt: skip
    assert "secret" not in repr(spec)
    sentinels = "127.0.0.1:26400,127.0.0.1:26401,127.0.0.1:26402"
    assert spec.url == f"rediss+sentinel://{sentinels}/stream-lstm?{tls.url_query()}"
    s = RedisSentinel(spec)
    data, sentinel = conf_of(s._node_conf(6401)), conf_of(s._node_conf(26401))
    for conf, port in ((data, "6401"), (sentinel, "26401")):
        assert conf["port"] == "0" and conf["tls-port"] == port
        assert conf["tls-replication"] == "yes" and conf["tls-auth-clients"] == "yes"
        assert conf["tls-ca-cert-file"] == quote_conf(str((tmp_path / "ca.crt").absolute()))
    assert data["requirepass"] == data["masterauth"] == '"data-secret"'
    assert data["replicaof"] == "127.0.0.1 6400"
    assert sentinel["requirepass"] == '"sentinel-secret"'
    assert 'sentinel auth-pass stream-lstm "data-secret"' in s._node_conf(26401)
    assert s._password_for(26400) == "sentinel-secret" and s._password_for(6400) == "data-secret"
    kw = s.client(26402).connection_pool.connection_kwargs
    assert kw["password"] == "sentinel-secret" and kw["ssl_certfile"] == str(tmp_path / "n.crt")
    # a sentinel password without TLS: plain ports, requirepass on the sentinels only
    plain = RedisSentinel(
        SentinelSpec(run_dir=tmp_path, data_ports=(6400, 6401), sentinel_ports=(1, 2, 3),
                     sentinel_password="spw")
    )  # fmt: skip
    assert conf_of(plain._node_conf(2))["requirepass"] == '"spw"'
    assert conf_of(plain._node_conf(2))["port"] == "2"
    assert "requirepass" not in conf_of(plain._node_conf(6400))
    assert not any(line.startswith("tls-") for p in (6400, 2) for line in plain._node_conf(p))
    assert plain.spec.url.startswith("redis+sentinel://")


def test_stack_settings_cluster_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STREAM_LSTM_STACK_REDIS_CLUSTER", "STREAM_LSTM_STACK_REDIS_CLUSTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = build_settings(StackSettings)
    assert s.redis_cluster is False and s.redis_cluster_port == 7000
    assert s.redis_cluster_ports == (7000, 7001, 7002, 7003, 7004, 7005)
    # without the cluster its ports do not matter
    assert build_settings(StackSettings, kafka_port=7001).kafka_port == 7001
    with pytest.raises(ConfigError, match=r"takes port\(s\) \[7001\]"):
        build_settings(StackSettings, kafka_port=7001, redis_cluster=True)
    with pytest.raises(ConfigError, match=r"takes port\(s\) \[16379\]"):
        build_settings(StackSettings, redis_port=16379, redis_cluster=True, redis_cluster_port=6375)
    with pytest.raises(ConfigError, match="--redis-cluster-port / STREAM_LSTM_STACK_REDIS_CLUSTER"):
        build_settings(StackSettings, redis_cluster_port=60000)
    monkeypatch.setenv("STREAM_LSTM_STACK_REDIS_CLUSTER", "1")
    monkeypatch.setenv("STREAM_LSTM_STACK_REDIS_CLUSTER_PORT", "7100")
    s = build_settings(StackSettings)
    assert s.redis_cluster and s.redis_cluster_port == 7100


def test_stack_flags_build_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STREAM_LSTM_STACK_REDIS_CLUSTER", "STREAM_LSTM_STACK_REDIS_CLUSTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    parser = build_parser()
    args = parser.parse_args(
        [
            "stack",
            "status",
            "--dir",
            str(tmp_path),
            "--redis-cluster",
            "--redis-cluster-port",
            "7100",
        ]
    )
    stack = stack_from_args(args)
    assert stack.cluster is not None
    assert stack.cluster.spec.ports == tuple(range(7100, 7106))
    assert stack.cluster.spec.run_dir == tmp_path / "redis-cluster"
    assert stack.cluster.spec.url == "redis://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102/0"
    plain = stack_from_args(parser.parse_args(["stack", "status", "--dir", str(tmp_path)]))
    assert plain.cluster is None  # nothing recorded and running there
    demo = parser.parse_args(["demo", "--dir", str(tmp_path)])
    assert stack_from_args(demo).cluster is None


def test_stack_status_lists_every_stopped_cluster_node(tmp_path: Path) -> None:
    stack = Stack(tmp_path, tmp_path / "cache", redis_cluster_port=7100)
    rows = [c for c in stack.status() if c.name == "redis-cluster"]
    assert [r.address for r in rows] == [f"127.0.0.1:{p}" for p in range(7100, 7106)]
    assert all(r.state == "stopped" and not r.ready for r in rows)
    assert all(r.detail == "redis-cluster node down" for r in rows)


def test_recorded_cluster_is_found_again(tmp_path: Path) -> None:
    c = RedisCluster(ClusterSpec(run_dir=tmp_path, ports=PORTS, bus_ports=tuple(range(1, 7))))
    tmp_path.mkdir(exist_ok=True)
    c._record()
    again = RedisCluster.recorded(tmp_path, password="pw")
    assert again is not None
    assert again.spec.ports == PORTS and again.spec.cluster_bus_ports == tuple(range(1, 7))
    assert again.spec.password == "pw"
    (tmp_path / "cluster.json").write_text("{not json")
    assert RedisCluster.recorded(tmp_path) is None
    assert RedisCluster.recorded(tmp_path / "nowhere") is None
