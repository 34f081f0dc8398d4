"""The GPU check (run by bench/device-check.sh): on a machine with CUDA, in one run on a local
stack it starts (Kafka + Redis, free ports),

1. parity: a worker with ``--device cuda`` publishes forecasts equal to ``Model.predict`` on CPU
   for the same events, within the stated tolerance (cuDNN may use TF32 inside the LSTM);
2. the inference microbenchmark on CUDA, ticks of 1 … 65,536 keys: the worker's tick (state in
   host slabs: gather, one transfer each way, scatter) and the same step with the state kept on
   the device (gather/scatter by index on the GPU; with a CUDA graph where it captures);
3. worker throughput with ``--device cuda`` next to ``--device cpu``, alternating on the same
   pre-filled topic.

JSON goes to ``--out`` (bench/results). ``--device cpu`` runs the same steps on CPU with small
sizes: a rehearsal of the script itself on a machine without a GPU (it proves nothing about CUDA).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_lstm.benchmark.workload import Workload

RTOL, ATOL = 2e-3, 2e-3  # forecasts in original units; TF32 in cuDNN's LSTM is ~1e-3 relative


def worker_args(
    model: Path, boot: str, redis: str, t_in: str, t_out: str, device: str
) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [
        "--model", str(model), "--bootstrap", boot, "--redis", redis, "--input-topic", t_in,
        "--output-topic", t_out, "--dlq-topic", f"{t_in}-dlq", "--group", f"dc-{tag}",
        "--namespace", f"dc-{tag}", "--max-future-ms", "-1", "--device", device,
    ]  # fmt: skip


def parity(
    w: Workload, model: Path, boot: str, redis: str, device: str, n: int, logs: Path
) -> dict[str, Any]:
    """Worker on ``device`` vs ``Model.predict`` on CPU, every forecast compared."""
    import msgspec
    import numpy as np
    import pandas as pd

    import stream_lstm as sl
    from stream_lstm.benchmark import systems
    from stream_lstm.benchmark.workload import create_topics, delete_topics, make_events, prefill

    run = uuid.uuid4().hex[:6]
    t_in, t_out = f"dc-par-in-{run}", f"dc-par-out-{run}"
    create_topics(boot, [t_in, t_out, f"{t_in}-dlq"], w.partitions)
    try:
        events = make_events(w, n, seed=7)
        prefill(boot, t_in, events)
        proc = systems.WorkerProcess(
            worker_args(model, boot, redis, t_in, t_out, device), logs / f"parity-{device}.log"
        )
        proc.wait_for("stream_lstm_forecasts_out_total", n, timeout=300)
        proc.stop()
        got = {}
        for m in systems.consume_all(boot, t_out):
            f = msgspec.json.decode(m.value())
            got[(f["key"], f["ts"])] = np.asarray(f["forecast"]["f0"], np.float64)
        rows = []
        for _, v in events:
            e = msgspec.json.decode(v)
            rows.append({"key": e["key"], "ts": e["ts"], **e["values"]})
        df = pd.DataFrame(rows)
        m = sl.load(model)
        pred = m.predict(df, time="ts", key="key")
        pred["ms"] = (pred["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        want = {
            (k, int(t)): g.sort_values("h")["value"].to_numpy(np.float64)  # type: ignore[call-overload]
            for (k, t), g in pred.groupby(["key", "ms"])
        }
        common = sorted(set(got) & set(want))
        diff = np.concatenate([np.abs(got[c] - want[c]) for c in common]) if common else np.zeros(0)
        scale = np.concatenate([np.abs(want[c]) for c in common]) if common else np.zeros(0)
        ok = bool(common) and len(common) == n and bool(np.all(diff <= ATOL + RTOL * scale))
        return {
            "device": device,
            "events": n,
            "forecasts_published": len(got),
            "forecasts_compared": len(common),
            "max_abs_diff": float(diff.max()) if diff.size else None,
            "max_rel_diff": float((diff / np.maximum(scale, 1e-6)).max()) if diff.size else None,
            "tolerance": {"rtol": RTOL, "atol": ATOL},
            "equal_within_tolerance": ok,
        }
    finally:
        delete_topics(boot, [t_in, t_out, f"{t_in}-dlq"])


def throughput(
    w: Workload,
    model: Path,
    boot: str,
    redis: str,
    device: str,
    events: int,
    rounds: int,
    logs: Path,
) -> dict[str, Any]:
    """The worker on ``device`` and on CPU, alternating, on one pre-filled topic."""
    import numpy as np

    from stream_lstm.benchmark import systems
    from stream_lstm.benchmark.workload import create_topics, delete_topics, make_events, prefill

    run = uuid.uuid4().hex[:6]
    t_in, t_out = f"dc-tp-in-{run}", f"dc-tp-out-{run}"
    create_topics(boot, [t_in, t_out, f"{t_in}-dlq"], w.partitions)
    try:
        prefill(boot, t_in, make_events(w, w.keys, seed=1, every_key_once=True))
        prefill(boot, t_in, make_events(w, events, seed=2, first=w.keys))
        rates: dict[str, list[float]] = {"cpu": [], device: []} if device != "cpu" else {"cpu": []}
        for r in range(rounds):
            for dev in list(rates) if r % 2 == 0 else list(rates)[::-1]:
                args = worker_args(model, boot, redis, t_in, t_out, dev)
                res, proc = systems.worker_run(args, logs / f"tp-{dev}-{r}.log", w.keys, events)
                proc.stop()
                rates[dev].append(res.rate)
                print(
                    f"  round {r + 1}: worker --device {dev}: {res.rate:,.0f} events/s", flush=True
                )
        med = {d: float(np.median(v)) for d, v in rates.items()}
        out: dict[str, Any] = {"keys": w.keys, "events": events, "rounds": rates, "median": med}
        if device != "cpu":
            out["cuda_over_cpu"] = med[device] / med["cpu"]
        return out
    finally:
        delete_topics(boot, [t_in, t_out, f"{t_in}-dlq"])


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a rehearsal)")
    p.add_argument("--parity-events", type=int, default=3000)
    p.add_argument("--keys", type=int, default=20_000, help="keys in the throughput runs")
    p.add_argument("--events", type=int, default=200_000, help="measured events per throughput run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--micro-sizes", default="1,4,16,64,256,1024,4096,16384,65536")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    a = p.parse_args()
    # a SIGTERM (timeout, kill) ends the run as Ctrl-C does: the servers it started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", a.device):
        p.error(f"--device {a.device}: use cuda, cuda:N or cpu")
    import torch  # (after the arguments: --help and a bad flag answer at once)

    from stream_lstm.benchmark.micro import micro_bench, resident_bench
    from stream_lstm.benchmark.run import machine
    from stream_lstm.benchmark.workload import Workload, make_model
    from stream_lstm.config import default_cache_dir
    from stream_lstm.stack import Stack
    from stream_lstm.stack.procs import free_port

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("device-check: no CUDA device here (torch.cuda.is_available() is False); "
              "--device cpu rehearses the script on CPU", file=sys.stderr)  # fmt: skip
        return 2
    sizes = tuple(int(x) for x in a.micro_sizes.split(","))
    t_start = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="device-check-"))
    w = Workload(keys=a.keys)
    model = make_model(w, logs / "model")
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "device": a.device,
        "settings": vars(a) | {"out": str(a.out)},
    }
    print(
        f"[1/3] inference microbenchmark on {a.device} (ticks of {sizes[0]} … {sizes[-1]:,} keys)",
        flush=True,
    )
    dev = torch.device(a.device)
    result["micro"] = [
        r for r in micro_bench(w.features + 4, w.hidden, w.layers, w.horizon, w.time_step, sizes,
                               threads=(1,), window_max=4096)
        if r["device"] == dev.type
    ]  # fmt: skip
    result["micro_resident"] = resident_bench(
        w.features + 4, w.hidden, w.layers, w.horizon, sizes, dev
    )
    for r, q in zip(result["micro"], result["micro_resident"], strict=True):
        graph = " (CUDA graph)" if q.get("graph") else ""
        print(
            f"  {r['keys']:>6,} keys: worker tick {r['step_ms']:.3f} ms · state on the device "
            f"{q['step_ms']:.3f} ms{graph}",
            flush=True,
        )
    stack = Stack(logs / "stack", default_cache_dir(), kafka_port=free_port(),
                  controller_port=free_port(), redis_port=free_port())  # fmt: skip
    print("starting Kafka and Redis …", flush=True)
    stack.redis.start()
    stack.kafka.start()
    try:
        boot, redis = stack.bootstrap, stack.redis_url
        print(f"[2/3] parity: worker --device {a.device} vs Model.predict on CPU", flush=True)
        pw = Workload(keys=200)
        pmodel = make_model(pw, logs / "model")  # the same artifact (same size and seed)
        result["parity"] = parity(pw, pmodel, boot, redis, a.device, a.parity_events, logs)
        print(f"  {result['parity']}", flush=True)
        other = "next to --device cpu" if a.device != "cpu" else "(a rehearsal: CPU only)"
        print(f"[3/3] worker throughput, --device {a.device} {other}", flush=True)
        result["throughput"] = throughput(w, model, boot, redis, a.device, a.events, a.rounds, logs)
    finally:
        stack.kafka.stop()
        stack.redis.stop()
    result["seconds"] = time.perf_counter() - t_start
    a.out.mkdir(parents=True, exist_ok=True)
    name = f"device-check-{time.strftime('%Y%m%d-%H%M%S')}{'-' + a.tag if a.tag else ''}.json"
    (a.out / name).write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {a.out / name} ({result['seconds']:.0f} s; logs in {logs})")
    return 0 if result["parity"]["equal_within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
