#!/usr/bin/env bash
# One tuning knob at a time against the defaults, on one shared local stack: each variant is a
# saturated-throughput round (10,000 keys) and a latency run at 20,000 events/s (10,000 keys).
# Results: bench/results/knobs/*.json (summarised in docs/benchmarks.md, "Tuning").
#   bench/knobs.sh        (~6 min; uses `stream-lstm stack up` on the default ports)
set -u
cd "$(dirname "$0")/.."
SL=.venv/bin/stream-lstm
$SL stack up || exit 1
trap '$SL stack down' EXIT
COMMON=(--only throughput,latency --keys 10000 --events 100000 --rounds 1 --baseline-events 500
        --loads 20000 --load-keys 10000 --load-seconds 8 --runtimes confluent
        --bootstrap 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0 --out bench/results/knobs)
run() { tag=$1; shift; echo "== $tag"; $SL bench "${COMMON[@]}" --tag "$tag" "$@"; }
run default
$SL bench --only latency --loads 5000 --load-keys 100000 --runtimes confluent \
  --bootstrap 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0 --out bench/results/knobs --tag rerun-5k
run max-batch-512 --max-batch 512
run max-wait-50 --max-wait-ms 50
run threads-2 --threads 2
run commit-200ms --worker-arg=--commit-interval-ms=200
run fetch-backoff-1000 --worker-arg=--consumer-option=fetch.queue.backoff.ms=1000
