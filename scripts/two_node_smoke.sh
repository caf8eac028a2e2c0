#!/usr/bin/env bash
# Two Ray nodes on one machine (a head and a worker node, one CPU each), then the smoke grid
# submitted as a Ray job with DDP across both nodes. Stops only the Ray it started.
#
#   scripts/two_node_smoke.sh [--workers N] [extra full_grid.py flags...]
#
# Env: RAYKD_PORT_BASE (default 47000) — every port this cluster uses is BASE..BASE+299, so
# it does not collide with another Ray on the machine (6379, 8265, 52365 are left alone);
# RAYKD_SMOKE_ROOT — results (default: a new temp dir). `ray stop` is never called: it would
# stop every Ray on the machine, other users' included.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${RAYKD_PORT_BASE:-47000}"
TMP="$(mktemp -d /tmp/raykd-2node-XXXXXX)"   # Ray's --temp-dir: sessions, logs, sockets
ROOT="${RAYKD_SMOKE_ROOT:-$TMP/runs}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"  # ray >= 2.59 turns token auth on after any ray.init
export RAY_USAGE_STATS_ENABLED=0
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--workers 2)

stop_cluster() {
    # Every process of this cluster names its temp dir on its command line (gcs_server,
    # raylets, agents, log monitors); their workers die with their raylet.
    local pids
    pids="$(pgrep -f -- "$TMP" || true)"
    if [ -n "$pids" ]; then
        echo "[two-node] stopping this cluster's processes: $(echo $pids | tr '\n' ' ')"
        kill $pids 2>/dev/null || true
        sleep 3
        kill -9 $(pgrep -f -- "$TMP" || true) 2>/dev/null || true
    fi
}
trap stop_cluster EXIT

HEAD=(--port "$B" --dashboard-port $((B + 1)) --ray-client-server-port $((B + 2))
      --dashboard-agent-listen-port $((B + 3)) --dashboard-agent-grpc-port $((B + 4))
      --node-manager-port $((B + 5)) --object-manager-port $((B + 6))
      --runtime-env-agent-port $((B + 7)) --metrics-export-port $((B + 8))
      --min-worker-port $((B + 100)) --max-worker-port $((B + 199)))
NODE2=(--dashboard-agent-listen-port $((B + 13)) --dashboard-agent-grpc-port $((B + 14))
       --node-manager-port $((B + 15)) --object-manager-port $((B + 16))
       --runtime-env-agent-port $((B + 17)) --metrics-export-port $((B + 18))
       --min-worker-port $((B + 200)) --max-worker-port $((B + 299)))

echo "[two-node] head: GCS port $B, dashboard http://127.0.0.1:$((B + 1)), temp dir $TMP"
ray start --head --num-cpus 1 --temp-dir "$TMP" --dashboard-host 127.0.0.1 \
    --include-dashboard true "${HEAD[@]}" --disable-usage-stats
GCS_ADDR="$(cat "$TMP/ray_current_cluster" 2>/dev/null || echo "127.0.0.1:$B")"
echo "[two-node] second node joins $GCS_ADDR"
ray start --address "$GCS_ADDR" --num-cpus 1 "${NODE2[@]}" --disable-usage-stats
RAY_ADDRESS="$GCS_ADDR" ray status || true

COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
ENV_JSON="{\"env_vars\": {\"RAYKD_GIT_COMMIT\": \"$COMMIT\""
[ -n "${RAYKD_SHARED_DATA:-}" ] && ENV_JSON+=", \"RAYKD_SHARED_DATA\": \"$RAYKD_SHARED_DATA\""
ENV_JSON+="}}"
echo "[two-node] submitting commit $COMMIT; results in $ROOT"
# By absolute path, no --working-dir: on one host both nodes share /tmp/ray/session_*, and an
# unpacked working dir once vanished mid-job; raykd reaches the workers through py_modules,
# which the driver adds to the job's runtime environment.
ray job submit --address "http://127.0.0.1:$((B + 1))" --runtime-env-json "$ENV_JSON" -- \
    python "$REPO/jobs/full_grid.py" --preset smoke --root "$ROOT" "${ARGS[@]}"
echo "[two-node] done; MLflow: mlflow ui --backend-store-uri sqlite:///$ROOT/mlflow.db"
