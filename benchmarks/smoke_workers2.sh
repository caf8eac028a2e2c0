#!/usr/bin/env bash
# Slow tier: the smoke grid with every stage on 2 DDP workers (Ray Train, gloo on CPU).
#
#   benchmarks/smoke_workers2.sh [ROOT]        # default ROOT: a fresh temporary folder
#
# Fails (exit 1) unless the job exits 0 and every row printed in its summary has a result
# ("(failed)" marks a row whose stages did not train). Prints the wall-clock. Starts its own
# local Ray (ray.init(address="local")) and stops only that one; RAY_ADDRESS is ignored here so
# the benchmark never lands on someone else's cluster.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-$(mktemp -d /tmp/raykd-smoke-w2.XXXXXX)}"
if [ -e "$root/mlflow.db" ]; then
  echo "smoke_workers2: $root already holds a run (stages would be reused); give a fresh ROOT" >&2
  exit 2
fi
log="$root/smoke_workers2.log"
mkdir -p "$root"

start=$(date +%s)
set +e
env -u RAY_ADDRESS python "$repo/jobs/full_grid.py" --preset smoke --workers 2 --address local \
  --root "$root" \
  2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
wall=$(($(date +%s) - start))

rows=$(grep -cE '^  \S+/(teacher|sft_teacher|student|equal_compute|std_kd|sft_kd)' "$log" || true)
failed=$(grep -c '(failed)' "$log" || true)
echo "smoke_workers2: rc $rc, $rows rows, $failed failed, wall-clock ${wall}s ($(nproc) CPUs)"
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$rows" -eq 0 ]; then
  exit 1
fi
