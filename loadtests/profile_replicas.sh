#!/bin/bash
# Where Kino's replicas spend their CPU under a load test: py-spy on every Serve replica at once.
#
#   bash loadtests/profile_replicas.sh WORKLOAD OUT [kino loadtest options...]
#   bash loadtests/profile_replicas.sh loadtests/workloads/small_16.yaml out/profile --preset small \
#       --max-batch-size 4 --replicas TextEncoder=1 --replicas Decoder=1 --replicas Denoiser=2
#
# Starts `kino loadtest` (its own local cluster), waits SETTLE seconds (default 50) after the Frontend replica
# appears, then records each replica for SECONDS (default 45) at 50 samples a second, on-CPU samples only, in
# py-spy's raw (collapsed) format: OUT/<deployment>-<n>.txt. Needs py-spy on PATH (`pip install py-spy`; it is
# not in the lock: a measuring tool, not a dependency). Results: docs/benchmarks.md.
set -euo pipefail
workload=$1 out=$2
shift 2
settle=${SETTLE:-50} seconds=${SECONDS_TO_RECORD:-45}
command -v py-spy >/dev/null || { echo "py-spy not found: pip install py-spy" >&2; exit 2; }
mkdir -p "$out"
.venv/bin/kino loadtest --workload "$workload" --report "$out/report" "$@" > "$out/loadtest.log" 2>&1 &
loadtest=$!
until pgrep -f "ray::ServeReplica:.*:Frontend" >/dev/null; do
  kill -0 $loadtest 2>/dev/null || { echo "the load test ended before its cluster started: $out/loadtest.log" >&2; exit 1; }
  sleep 1
done
sleep "$settle"
for role in Frontend Dispatcher ProgressHub TextEncoder Denoiser Decoder; do
  n=0
  for pid in $(pgrep -f "ray::ServeReplica:.*:${role}"); do
    n=$((n + 1))
    py-spy record -p "$pid" -d "$seconds" -r 50 -f raw -o "$out/$role-$n.txt" --nonblocking > "$out/py-spy-$role-$n.log" 2>&1 &
  done
done
wait $loadtest
wait
grep -h "Samples" "$out"/py-spy-*.log
