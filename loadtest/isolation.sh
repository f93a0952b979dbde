#!/usr/bin/env bash
# Isolation benchmark: other users' chat p99 while one user pages through a 100 000-message
# archive in a loop, against the idle figure (the issue's target: within 2x), on the single
# binary and on the loopback cluster. docs/benchmarks.md, "Isolation", has the figures.
#
#   loadtest/isolation.sh [single|cluster|both] [OUTDIR]    (default: both)
#
# For each setup: start it (release build, archiving on), create the accounts through the
# admin API, fill the archive of the pager ([mam] user 0 of loadtest/scenarios/isolation.toml
# sends ARCHIVE chat messages to [mam] user 1 through the server: real archive writes, the
# cheapest real way; the per-session stanza rate limit is raised to 5000/s for it, and the fill is
# done when a query sent after the messages is answered), then run the scenario twice on
# the same server:
#   idle   chat between PAIRS pairs at CHAT_RATE msgs/s, nobody paging (mam.pagers=0)
#   pager  the same, while one user pages through its archive, 100 per page, in a loop
# and print both chat p99 figures and their ratio. OUTDIR (default
# loadtest/results/isolation-<date>-<time>/) receives the JSON reports and server logs.
#
# Environment: ARCHIVE (100000), CHAT_RATE (1000), PAIRS (500, chat pairs, at most 500),
# STEADY (60, seconds of steady chat),
# PIN (1: generator on CPU 0, server processes on CPU 1, with 2 or more cores), BUILD (1:
# cargo build --release first), LOAD_BIN and RK_BIN (other rookery-load / rookery binaries).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

what=both
case ${1:-} in single | cluster | both) what=$1; shift ;; esac
out=$(realpath -m "${1:-loadtest/results/isolation-$(date +%Y-%m-%d-%H%M)}")
ARCHIVE=${ARCHIVE:-100000}
CHAT_RATE=${CHAT_RATE:-1000}
PAIRS=${PAIRS:-500}
STEADY=${STEADY:-60}
PIN=${PIN:-1}
SCN=$root/loadtest/scenarios/isolation.toml
LOAD=${LOAD_BIN:-$root/target/release/rookery-load}
ROOKERY=${RK_BIN:-$root/target/release/rookery}
SINGLE_C2S=26222
SINGLE_HTTP=26280
CLUSTER_BASE=28000

if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    GEN=(taskset -c 0)
    SRV=(taskset -c 1)
else
    GEN=()
    SRV=()
fi

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -f "$out/cluster/redis.pid" ]; then
        LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=$CLUSTER_BASE deploy/local-cluster.sh down >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

mkdir -p "$out"
if [ "${BUILD:-1}" = 1 ]; then
    log "building release binaries"
    cargo build --release -q -p rookery -p rookery-load
fi

# ---------------------------------------------------------------- one setup

# addr admin_url token_file label
measure() {
    local addr=$1 admin=$2 token=$3 label=$4
    local common=(--set "target.address=$addr" --set "chat.rate=$CHAT_RATE" --set "chat.pairs=$PAIRS"
        --set "chat.phases.1.duration=${STEADY}s" --set "mam.duration=$((STEADY + 5))s")
    log "$label: creating accounts"
    "$LOAD" provision "$SCN" --method admin --admin-url "$admin" --admin-token-file "$token" \
        >"$out/$label-provision.txt" 2>&1 || log "$label: some accounts were not created: $(tail -1 "$out/$label-provision.txt")"
    log "$label: filling the pager's archive with $ARCHIVE messages"
    # Short chat and query phases; the grace lets the last-page queries, which queue behind
    # each user's seed messages, be answered once every seed message was archived.
    "${GEN[@]}" "$LOAD" run "$SCN" "${common[@]}" --set "mam.seed_messages=$ARCHIVE" --set mam.seed_one_way=true \
        --set mam.pagers=0 --set chat.pairs=1 --set chat.rate=1 --set chat.phases.0.duration=1s \
        --set chat.phases.1.duration=1s --set mam.duration=2s --set mam.rate=1 --set run.grace=900s \
        --json "$out/$label-seed.json" -q >"$out/$label-seed.txt" 2>&1 || true
    for run in idle pager; do
        local extra=()
        [ "$run" = idle ] && extra=(--set mam.pagers=0)
        log "$label: $run run, chat $CHAT_RATE msgs/s for ${STEADY}s"
        "${GEN[@]}" "$LOAD" run "$SCN" "${common[@]}" "${extra[@]}" \
            --json "$out/$label-$run.json" -q >"$out/$label-$run.txt" 2>&1 || true
    done
}

single() {
    local d=$out/single
    mkdir -p "$d/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -keyout "$d/tls/key.pem" -out "$d/tls/cert.pem" -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost" 2>/dev/null
    cat >"$d/rookery.toml" <<CONF
domains = ["localhost"]
data_dir = "$d/data"

[listen]
c2s = "127.0.0.1:$SINGLE_C2S"
c2s_tls = "off"
http = "127.0.0.1:$SINGLE_HTTP"

[tls]
cert = "$d/tls/cert.pem"
key = "$d/tls/key.pem"

[limits]
max_connections_per_ip = 100000
# The archive fill: 5000 msgs/s from one session (20 s for 100 000), which the reading
# client keeps up with (unpaced, its server-side queue overflowed on this 2-core machine).
stanza_rate_per_sec = 5000

[mam]
enabled = true

[log]
level = "warn"
CONF
    (
        ulimit -n "$(ulimit -Hn)"
        exec "${SRV[@]}" "$ROOKERY" serve --config "$d/rookery.toml" >>"$d/rookery.log" 2>&1
    ) &
    SERVER_PID=$!
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SINGLE_HTTP/health/ready")" = 200 ] && break
        sleep 0.2
    done
    log "single binary running, pid $SERVER_PID"
    measure "127.0.0.1:$SINGLE_C2S" "http://127.0.0.1:$SINGLE_HTTP" "$d/data/admin.token" single
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cluster() {
    log "starting the loopback cluster (2 routers, 2 edges, redis, shared SQLite store)"
    mkdir -p "$out/cluster"
    ROOKERY_LIMITS_MAX_CONNECTIONS_PER_IP=100000 ROOKERY_LIMITS_STANZA_RATE_PER_SEC=5000 \
        ROOKERY_LOG_LEVEL=warn ROOKERY_MAM_ENABLED=true ROOKERY_BIN=$ROOKERY \
        LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=$CLUSTER_BASE \
        "${SRV[@]}" deploy/local-cluster.sh up >"$out/cluster/up.txt"
    # Clients on the first edge; users are spread over both routers by the ring.
    measure "127.0.0.1:$((CLUSTER_BASE + 22))" "http://127.0.0.1:$((CLUSTER_BASE + 81))" \
        "$out/cluster/router-1/admin.token" cluster
    for n in 1 2; do
        curl -s "http://127.0.0.1:$((CLUSTER_BASE + 80 + n))/admin/stats" \
            -H "Authorization: Bearer $(cat "$out/cluster/router-$n/admin.token")" >"$out/cluster-router-$n-stats.json" || true
    done
    LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=$CLUSTER_BASE deploy/local-cluster.sh down >/dev/null
}

case $what in
single) single ;;
cluster) cluster ;;
both) single; cluster ;;
esac

# ---------------------------------------------------------------- the figures

python3 - "$out" <<'PY' | tee "$out/isolation.md"
import json, os, sys
out = sys.argv[1]
def rep(label, run):
    try:
        with open(os.path.join(out, f"{label}-{run}.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
print("| setup | chat p99 idle ms | chat p99 with pager ms | ratio | chat p50 idle / pager ms | pages read (passes) | page p99 ms | chat lost |")
print("|---|---|---|---|---|---|---|---|")
for label in ("single", "cluster"):
    idle, pager = rep(label, "idle"), rep(label, "pager")
    if not idle or not pager:
        continue
    ci, cp = idle["scenarios"]["chat"], pager["scenarios"]["chat"]
    m = pager["scenarios"].get("mam", {})
    p99i, p99p = ci["latency"]["p99_us"] / 1000, cp["latency"]["p99_us"] / 1000
    ratio = p99p / p99i if p99i else float("nan")
    mc = m.get("counters", {})
    lost = ci["counters"].get("lost", 0) + cp["counters"].get("lost", 0)
    print(f"| {label} | {p99i:.2f} | {p99p:.2f} | {ratio:.2f}x | {ci['latency']['p50_us'] / 1000:.2f} / "
          f"{cp['latency']['p50_us'] / 1000:.2f} | {mc.get('pages', 0)} ({mc.get('passes', 0)}) | "
          f"{m.get('latency', {}).get('p99_us', 0) / 1000:.1f} | {lost} |")
PY
