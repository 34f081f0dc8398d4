"""Summaries of a benchmark result: a console table and a Markdown fragment."""

from __future__ import annotations

from typing import Any


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} logical cores, {m['memory_gib']} GiB; {m['os']}; "
        f"Python {m['python']}, torch {m['torch']}, librdkafka {m['librdkafka']}, "
        f"Apache Kafka {m['kafka']}, stream-lstm {m['stream_lstm']}; GPU: {m['cuda'] or 'none'}.",
        "",
    ]
    s = r["settings"]
    if r.get("throughput"):
        lines += [
            f"Saturated throughput, median of {s['rounds']} rounds (events/s; {s['events']:,} measured "
            f"events per run; the per-event baseline on {s['baseline_events']:,}):",
            "",
            "| keys | passthrough ceiling | worker | per-event baseline | worker / passthrough | worker / baseline | worker CPU | worker RSS |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in r["throughput"]:
            med = t["median_events_per_s"]
            lines.append(
                f"| {t['keys']:,} | {med['passthrough']:,.0f} | {med['worker']:,.0f} | {med['per-event baseline']:,.0f} "
                f"| {t['worker_over_passthrough']:.2f} | {t['worker_over_baseline']:.0f}× | {t['worker_cpu_percent_median']:.0f} % "
                f"| {t['worker_rss_bytes_max'] / 2**20:.0f} MiB |"
            )
        lines.append("")
        lines += _variant(
            r["throughput"], "worker (Redis Cluster)", "cluster_over_single_node",
            "The same worker with its state on a local Redis Cluster (3 masters + 3 replicas, "
            "each commit cycle waiting for 1 replica), measured in the same rounds:",
            ("worker, one Redis node", "worker, Redis Cluster", "cluster / one node"),
        )  # fmt: skip
        lines += _variant(
            r["throughput"], "worker (exactly-once)", "exactly_once_over_at_least_once",
            "The same worker with `--processing-guarantee exactly-once` (one Kafka transaction "
            "per commit cycle), measured in the same rounds:",
            ("worker, at-least-once", "worker, exactly-once", "exactly-once / at-least-once"),
        )  # fmt: skip
        if any("faust worker" in t["median_events_per_s"] for t in r["throughput"]):
            lines += [
                "The Faust runtime (`--runtime faust`, same engine, measured in the same rounds):",
                "",
                "| keys | faust worker | faust / passthrough | faust / worker | faust RSS |",
                "|---:|---:|---:|---:|---:|",
            ]
            for t in r["throughput"]:
                if "faust worker" in t["median_events_per_s"]:
                    lines.append(
                        f"| {t['keys']:,} | {t['median_events_per_s']['faust worker']:,.0f} "
                        f"| {t['faust_over_passthrough']:.2f} | {t['faust_over_worker']:.2f} "
                        f"| {t['faust_rss_bytes_max'] / 2**20:.0f} MiB |"
                    )
            lines.append("")
    if r.get("latency"):
        lines += [
            "End-to-end latency (input message timestamp → forecast message timestamp) at fixed offered loads:",
            "",
            "| runtime | keys | offered | achieved | p50 | p95 | p99 | max | worker CPU | worker RSS | snapshot stall (mean, cycles) | Redis AOF rewrites in it |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for x in r["latency"]:
            ms = x["latency_ms"]
            snap = x.get("worker_stages", {}).get("snapshot", {})
            stall = f"{snap['mean']:.1f} ms ({snap['count']:.0f})" if snap.get("count") else "–"
            lines.append(
                f"| {x.get('runtime', 'confluent')} | {x['keys']:,} | {x['offered_events_per_s']:,} | {x['achieved_events_per_s']:,.0f} | {ms['p50']:.1f} ms "
                f"| {ms['p95']:.1f} ms | {ms['p99']:.1f} ms | {ms['max']:.0f} ms | {x['worker_cpu_percent']:.0f} % "
                f"| {x['worker_rss_bytes'] / 2**20:.0f} MiB | {stall} | {_count(x.get('aof_rewrites_during'))} |"
            )
        lines.append("")
    if r.get("burst"):
        b = r["burst"]
        steps = " → ".join(f"{p['offered_events_per_s']:,}/s" for p in b["phases"])
        lines += [
            f"Burst ({steps}, {b['keys']:,} warm keys): latency of the events produced in each phase, "
            "and the time from the end of the burst until the last event produced before it had its forecast:",
            "",
            "| phase | offered | seconds | events | p50 | p95 | p99 | max |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, p in enumerate(b["phases"]):
            ms = p["latency_ms"]
            lines.append(
                f"| {i + 1} | {p['offered_events_per_s']:,}/s | {p['seconds']:g} | {p['events']:,} | {ms['p50']:.0f} ms "
                f"| {ms['p95']:.0f} ms | {ms['p99']:.0f} ms | {ms['max']:.0f} ms |"
            )
        lines += [
            "",
            f"Drained **{b['drain_seconds']:.1f} s** after the burst ended (the producer took "
            f"{b['producer_seconds']:.1f} s for a {b['scheduled_seconds']:.0f} s schedule); worker CPU "
            f"{b['worker_cpu_percent']:.0f} %, RSS {b['worker_rss_bytes'] / 2**20:.0f} MiB; Redis AOF rewrites "
            f"during it: {_count(b.get('aof_rewrites_during'))}.",
            "",
        ]
    if r.get("micro"):
        lines += [
            "Inference, one tick of S keys (keys/s): `step` = gather (h, c), one LSTM step, head, scatter; "
            "`window` = recompute a T-step window per key:",
            "",
            "| device | threads | S | step ms | step keys/s | window ms | window keys/s | window / step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for x in r["micro"]:
            w = (
                f"{x['window_ms']:.2f} | {x['window_keys_per_s']:,.0f} | {x['window_over_step']:.0f}×"
                if "window_ms" in x
                else "– | – | –"
            )
            lines.append(
                f"| {x['device']} | {x['threads']} | {x['keys']:,} | {x['step_ms']:.3f} | {x['step_keys_per_s']:,.0f} | {w} |"
            )
        lines.append("")
    return "\n".join(lines)


def _variant(
    rows: list[dict[str, Any]], name: str, ratio: str, intro: str, heads: tuple[str, str, str]
) -> list[str]:
    """A table of the worker next to one of its variants measured in the same rounds (none when
    the run did not measure it)."""
    rows = [t for t in rows if name in t["median_events_per_s"]]
    if not rows:
        return []
    out = [intro, "", f"| keys | {' | '.join(heads)} |", "|---:|---:|---:|---:|"]
    for t in rows:
        med = t["median_events_per_s"]
        out.append(f"| {t['keys']:,} | {med['worker']:,.0f} | {med[name]:,.0f} | {t[ratio]:.2f} |")
    return [*out, ""]


def _count(n: int | None) -> str:
    return "–" if n is None else f"{n}"
