#!/usr/bin/env bash
# The GPU check of docs/benchmarks.md#gpu, in one run that ends within 8 minutes on a GPU machine:
#   1. the inference microbenchmark on CUDA, ticks of 1 … 65,536 keys (the worker's tick, with its
#      state in host slabs, and the same tick with the state kept on the GPU, CUDA graph or not);
#   2. parity: a worker with --device cuda publishes forecasts equal to Model.predict on CPU
#      (rtol 2e-3, atol 2e-3: cuDNN may run the LSTM's products in TF32);
#   3. worker throughput with --device cuda next to --device cpu, alternating on one topic.
# It starts its own Kafka (from the Maven jars the project caches) and Redis on free ports, and
# writes JSON to bench/results/device-check-*.json. It needs the project's environment (make
# venv: Python, Java 17, redis-server) on a machine with an NVIDIA GPU and its driver.
#
#   bench/device-check.sh                 # the check (exit 2 without a CUDA device)
#   bench/device-check.sh --device cpu --keys 2000 --events 20000 --micro-sizes 1,64,1024
#                                         # a rehearsal of the script on CPU (proves no CUDA)
#
# Exit status: 0 when the forecasts agree, 1 when they do not, 2 without a GPU, 124 past 8 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ! -x $PY ]]; then
    make venv >&2
fi
exec timeout "${DEVICE_CHECK_TIMEOUT_S:-480}" "$PY" bench/device_check.py "$@"
