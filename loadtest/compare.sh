#!/usr/bin/env bash
# Rookery against Prosody and ejabberd on this machine, with rookery-load (docs/loadtest.md).
# The figures and how to read them are in docs/benchmarks.md.
#
#   loadtest/compare.sh [run] [OUTDIR]   the comparison: every server x archiving off/on x
#                                        idle, chat, saturation, login storm (about 30 min)
#   loadtest/compare.sh cluster [OUTDIR] single-binary `rookery serve` against the loopback
#                                        cluster (deploy/local-cluster.sh), release build
#   loadtest/compare.sh conns [OUTDIR]   many idle connections against Rookery (IDLE_MAX,
#                                        default 50000): one process up to its descriptor
#                                        limit, and 50k spread over three cluster edges
#   loadtest/compare.sh table OUTDIR     print the table of an earlier run again
#
# OUTDIR defaults to loadtest/results/<date>-<time>/ (git-ignored). It receives every raw
# JSON report (<server>-<mode>-<scenario>.json), the per-run generator CPU and exit status
# (*.time), server logs, summary.json and table.md, which is also printed.
#
# Each server gets its own loopback port (Rookery 25222, Prosody 25322, ejabberd 25422), the
# same self-signed ECDSA P-256 certificate, the same 10 000 accounts (cmp1..cmp10000@localhost)
# and the same scenario files (loadtest/scenarios/compare/): STARTTLS, SCRAM-SHA-1, no
# XEP-0198. The data directory of a server is kept between its two modes, so accounts are
# provisioned once (Rookery: admin API; Prosody, ejabberd: in-band registration).
#
# The load generator and the server share this machine. With PIN=1 (default, needs 2 cores)
# the generator runs on CPU 0 and the server on CPU 1 (taskset), so neither steals the
# other's core; PIN=0 lets the scheduler place both.
#
# Environment: SERVERS ("rookery prosody ejabberd"), MODES ("nomam mam"), SCENARIOS
# ("idle chat saturation half login"), PIN (1), CHAT_RATE (500), RATES (chat saturation
# steps, "1000 2000 5000 10000 20000 40000 60000 80000"), LOGIN_RATES ("100 200 500 1000
# 1500 2000 3000"), SAT_STEADY (20, seconds), IDLE_MAX (50000); for `cluster`: CLUSTER_RATES
# ("1000 2500 5000"), LOAD_SET (overrides for every single-server rookery-load run, e.g.
# "target.stream_management=true") and CLUSTER_MAM (false: archiving off in both setups, so the table shows
# what the cluster hops cost; true: on, with the cluster's shared SQLite store); RK_BIN
# (another rookery binary to measure instead of target/release/rookery).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

cmd=run
case ${1:-} in run | cluster | conns | table) cmd=$1; shift ;; esac
out=$(realpath -m "${1:-loadtest/results/$(date +%Y-%m-%d-%H%M)}")

SERVERS=${SERVERS:-rookery prosody ejabberd}
MODES=${MODES:-nomam mam}
SCENARIOS=${SCENARIOS:-idle chat saturation half login}
PIN=${PIN:-1}
CHAT_RATE=${CHAT_RATE:-500}
RATES=${RATES:-1000 2000 5000 10000 20000 40000 60000 80000}
LOGIN_RATES=${LOGIN_RATES:-100 200 500 1000 1500 2000 3000}
SAT_STEADY=${SAT_STEADY:-20}
IDLE_MAX=${IDLE_MAX:-50000}
CLUSTER_MAM=${CLUSTER_MAM:-false}
SCN=loadtest/scenarios/compare
LOAD=$root/target/release/rookery-load
# RK_BIN: measure another build of rookery (loadtest/versions.sh puts two side by side).
# LOAD_SET: space-separated KEY=VALUE overrides added last to every single-server
# rookery-load run, e.g. LOAD_SET="target.stream_management=true" (XEP-0198 on).
LOAD_SETS=()
for kv in ${LOAD_SET:-}; do LOAD_SETS+=(--set "$kv"); done
ROOKERY=${RK_BIN:-$root/target/release/rookery}

declare -A PORT=([rookery]=25222 [prosody]=25322 [ejabberd]=25422)
RK_HTTP=25280

if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    GEN=(taskset -c 0)
    SRV=(taskset -c 1)
else
    GEN=()
    SRV=()
fi

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- preparation

prepare() {
    local missing=()
    command -v prosody >/dev/null || missing+=(prosody)
    command -v ejabberdctl >/dev/null || missing+=(ejabberd)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (Debian packages)"
        local sudo=()
        [ "$(id -u)" = 0 ] || sudo=(sudo)
        "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null
        # The packages start their system-wide services; this script runs its own.
        "${sudo[@]}" systemctl stop prosody ejabberd 2>/dev/null || true
    fi
    log "building release binaries"
    if [ -n "${RK_BIN:-}" ]; then
        cargo build --release -q -p rookery-load
    else
        cargo build --release -q -p rookery -p rookery-load
    fi
    mkdir -p "$out"
    if [ ! -f "$out/tls/cert.pem" ]; then
        mkdir -p "$out/tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -keyout "$out/tls/key.pem" -out "$out/tls/cert.pem" -subj "/CN=localhost" \
            -addext "subjectAltName=DNS:localhost" 2>/dev/null
    fi
    [ -f "$out/machine.txt" ] || machine >"$out/machine.txt"
}

machine() {
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB (free -g)"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "rookery: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) (working tree at run time)"
    echo "prosody: $(dpkg-query -W -f '${Version}' prosody 2>/dev/null || echo none)"
    echo "ejabberd: $(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null || echo none)"
    echo "erlang: $(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null || echo none)"
    echo "lua: $(dpkg-query -W -f '${Version}' lua5.4 2>/dev/null || echo none)"
    echo "ulimit -Hn: $(ulimit -Hn)"
    echo "pinning: ${GEN[*]:-none} (generator) / ${SRV[*]:-none} (server)"
}

# ---------------------------------------------------------------- servers

SERVER_PID=""
SERVER_NAME=""

rookery_config() { # mode
    local d=$out/rookery mam=false
    [ "$1" = mam ] && mam=true
    mkdir -p "$d"
    cat >"$d/rookery.toml" <<EOF
domains = ["localhost"]
data_dir = "$d/data"

[listen]
c2s = "127.0.0.1:${PORT[rookery]}"
c2s_tls = "off"
http = "127.0.0.1:$RK_HTTP"

[tls]
cert = "$out/tls/cert.pem"
key = "$out/tls/key.pem"

[limits]
# The generator's connections come from 20 addresses; 10 000 of them need more than the
# default 64 per address.
max_connections_per_ip = 100000

[mam]
enabled = $mam

[log]
level = "warn"
EOF
}

start_server() { # server mode -> sets SERVER_PID
    local s=$1 mode=$2 d=$out/$1
    mkdir -p "$d"
    case $s in
    rookery)
        rookery_config "$mode"
        (
            ulimit -n "$(ulimit -Hn)"
            exec "${SRV[@]}" "$ROOKERY" serve --config "$d/rookery.toml" >>"$d/rookery.log" 2>&1
        ) &
        SERVER_PID=$!
        for _ in $(seq 100); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$RK_HTTP/health/ready")" = 200 ] && break
            sleep 0.2
        done
        ;;
    prosody)
        cp "$out/tls/cert.pem" "$out/tls/key.pem" "$d/"
        SERVER_PID=$("${SRV[@]}" loadtest/peers/prosody.sh start "$d" "${PORT[prosody]}" "$mode")
        ;;
    ejabberd)
        cat "$out/tls/cert.pem" "$out/tls/key.pem" >"$d/cert.pem"
        SERVER_PID=$("${SRV[@]}" loadtest/peers/ejabberd.sh start "$d" "${PORT[ejabberd]}" "$mode")
        ;;
    esac
    SERVER_NAME=$s
    kill -0 "$SERVER_PID"
    # Every thread of the server on the server's core, also ones started before exec.
    [ ${#SRV[@]} -gt 0 ] && taskset -a -cp 1 "$SERVER_PID" >/dev/null
    log "$s ($mode) running, pid $SERVER_PID, port ${PORT[$s]}"
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local pid=$SERVER_PID
    case $SERVER_NAME in
    rookery) kill -TERM "$pid" 2>/dev/null || true ;;
    prosody) loadtest/peers/prosody.sh stop "$out/prosody" ;;
    ejabberd) loadtest/peers/ejabberd.sh stop "$out/ejabberd" ;;
    esac
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    stop_server
    if [ -f "$out/cluster/redis.pid" ]; then
        LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=27000 deploy/local-cluster.sh down >/dev/null 2>&1 || true
    fi
    if [ -n "${EXTRA_EDGE:-}" ]; then kill -TERM "$EXTRA_EDGE" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

provision() { # server
    local s=$1
    [ -f "$out/$s/provisioned" ] && return 0
    log "provisioning 10000 accounts on $s"
    local args=(--set "target.address=127.0.0.1:${PORT[$s]}")
    if [ "$s" = rookery ]; then
        args+=(--method admin --admin-url "http://127.0.0.1:$RK_HTTP" --admin-token-file "$out/rookery/data/admin.token")
    fi
    "$LOAD" provision "$SCN/chat.toml" "${args[@]}" >"$out/$s/provision.txt" 2>&1
    touch "$out/$s/provisioned"
}

# ---------------------------------------------------------------- one run

busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }

# load NAME SCENARIO_FILE [--set ...]: runs rookery-load against the current server and
# writes NAME.json, NAME.txt (text report) and NAME.time (exit status, wall and CPU seconds
# of the generator, CPU seconds of the whole machine). Returns rookery-load's exit status.
load() {
    local name=$1 file=$2
    shift 2
    local b0 b1 rc=0 wall usr sys
    b0=$(busy_jiffies)
    /usr/bin/time -f '%e %U %S' -o "$out/$name.gentime" \
        "${GEN[@]}" "$LOAD" run "$file" --set "target.address=127.0.0.1:${PORT[$SERVER_NAME]}" "$@" "${LOAD_SETS[@]}" \
        --json "$out/$name.json" --server-pid "$SERVER_PID" -q >"$out/$name.txt" 2>&1 || rc=$?
    b1=$(busy_jiffies)
    # time(1) puts "Command exited with non-zero status N" before its line on failures.
    read -r wall usr sys < <(tail -1 "$out/$name.gentime")
    awk -v rc="$rc" -v w="$wall" -v u="$usr" -v s="$sys" -v b="$((b1 - b0))" -v t="$(getconf CLK_TCK)" \
        'BEGIN {printf "{\"rc\": %d, \"wall_s\": %.2f, \"gen_cpu_s\": %.2f, \"machine_cpu_s\": %.2f}\n", rc, w, u + s, b / t}' \
        >"$out/$name.time"
    rm -f "$out/$name.gentime"
    return $rc
}

# ---------------------------------------------------------------- measurements

# JSON helpers: steady-window figures of a chat report (python, see metrics.py below).
metrics() { python3 "$out/metrics.py" "$@"; }

sat_passes() { # json ramp rate -> 0 when the saturation criteria hold
    metrics sat-pass "$1" "$2" "$3"
}

run_server_mode() { # server mode
    local s=$1 mode=$2 p="$1-$2"
    start_server "$s" "$mode"
    provision "$s"
    for scn in $SCENARIOS; do
        case $scn in
        idle)
            log "$p: idle 10k"
            load "$p-idle" "$SCN/idle.toml" --set idle.login_rate=500 || true
            ;;
        chat)
            log "$p: chat $CHAT_RATE msg/s"
            load "$p-chat" "$SCN/chat.toml" --set "chat.rate=$CHAT_RATE" || true
            ;;
        saturation)
            for r in $RATES; do
                log "$p: saturation $r msg/s"
                load "$p-sat-$r" "$SCN/chat.toml" --set "chat.rate=$r" --set chat.phases.0.duration=2s \
                    --set "chat.phases.1.duration=${SAT_STEADY}s" || true
                if ! sat_passes "$out/$p-sat-$r.json" 2 "$r"; then
                    log "$p: fails at $r msg/s; series stops"
                    break
                fi
            done
            ;;
        half)
            [ "$s" = rookery ] || continue
            local best
            best=$(metrics best-rate "$out" "$p")
            if [ "$best" -gt 0 ]; then
                local h=$((best / 2))
                log "$p: half of saturation, $h msg/s"
                load "$p-half-$h" "$SCN/chat.toml" --set "chat.rate=$h" --set chat.phases.0.duration=2s \
                    --set "chat.phases.1.duration=${SAT_STEADY}s" || true
            fi
            ;;
        login)
            for r in $LOGIN_RATES; do
                log "$p: login storm $r/s"
                local rc=0
                load "$p-login-$r" "$SCN/login.toml" --set "login.rate=$r" --set login.users=100 || rc=$?
                if [ $rc != 0 ]; then
                    log "$p: login storm fails at $r/s; series stops"
                    break
                fi
            done
            ;;
        esac
    done
    stop_server
}

# ---------------------------------------------------------------- cluster vs single

cluster_cpu() { # "name cpu_seconds rss_kib" of every process of the loopback cluster
    local n pid tck
    tck=$(getconf CLK_TCK)
    for n in redis router-1 router-2 edge-11 edge-12 edge-13; do
        [ -f "$out/cluster/$n.pid" ] || continue
        pid=$(cat "$out/cluster/$n.pid")
        [ -r "/proc/$pid/stat" ] || continue
        echo "$n $(awk -v t="$tck" '{sub(/.*\) /, ""); print ($12 + $13) / t}' "/proc/$pid/stat") $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    done
}

cluster_sampler() { # every second: unix ms, routers' redis_requests, CPU-s of the cluster
    while :; do
        echo "$(date +%s%3N) $(redis_requests) $(cluster_cpu | awk '{s += $2} END {print s}')"
        sleep 1
    done
}

redis_requests() { # sum of the routers' redis_requests
    local total=0 n v
    for n in 1 2; do
        v=$(curl -s "http://127.0.0.1:$((27080 + n))/admin/stats" \
            -H "Authorization: Bearer $(cat "$out/cluster/router-$n/admin.token")" | jq '.redis_requests // 0')
        total=$((total + v))
    done
    echo "$total"
}

# Cluster: two rookery-load workers, each connected to its own edge. A worker owns whole
# pairs, so both members of a pair are on the same edge; every message still goes edge ->
# router (gRPC) -> edge, with the session lookup on the router. CPU of every cluster process
# (routers, edges, redis) is read from /proc before and after each rate.
cluster_bench() {
    local rates=${CLUSTER_RATES:-1000 2500 5000} mode=nomam
    [ "$CLUSTER_MAM" = true ] && mode=mam
    mkdir -p "$out/cluster"
    echo "$CLUSTER_MAM" >"$out/cluster-mam"
    # Single binary first, same accounts, same scenario, same archiving setting.
    SERVER_NAME=rookery
    start_server rookery "$mode"
    provision rookery
    for r in $rates; do
        log "single: chat $r msg/s"
        load "single-chat-$r" "$SCN/chat.toml" --set "chat.rate=$r" --set chat.phases.0.duration=2s \
            --set "chat.phases.1.duration=${SAT_STEADY}s" --set chat.pairs=1000 || true
    done
    stop_server

    log "starting the loopback cluster (release build)"
    ROOKERY_LIMITS_MAX_CONNECTIONS_PER_IP=100000 ROOKERY_LOG_LEVEL=warn ROOKERY_BIN=$ROOKERY \
        ROOKERY_MAM_ENABLED=$CLUSTER_MAM LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=27000 \
        "${SRV[@]}" deploy/local-cluster.sh up >"$out/cluster/up.txt"
    if [ ! -f "$out/cluster/provisioned" ]; then
        "$LOAD" provision "$SCN/chat.toml" --method admin --admin-url http://127.0.0.1:27081 \
            --admin-token-file "$out/cluster/router-1/admin.token" --set chat.pairs=1000 \
            --set users.count=2000 >"$out/cluster/provision.txt" 2>&1
        touch "$out/cluster/provisioned"
    fi
    for r in $rates; do
        log "cluster: chat $r msg/s over two edges"
        local before after start
        before=$(redis_requests)
        redis-cli -p 27079 INFO commandstats >"$out/cluster-chat-$r.redis0" 2>/dev/null || true
        cluster_cpu >"$out/cluster-chat-$r.cpu0"
        cluster_sampler >"$out/cluster-chat-$r.samples" &
        local sampler=$!
        start=$(($(date +%s) + 8))
        local pids=()
        for w in 0 1; do
            /usr/bin/time -f '%e %U %S' -o "$out/cluster-chat-$r-w$w.gentime" \
                "${GEN[@]}" "$LOAD" run "$SCN/chat.toml" --worker "$w/2" --start-at "$start" \
                --set "target.address=127.0.0.1:$((27022 + 10 * w))" --set "chat.rate=$r" \
                --set chat.phases.0.duration=2s --set "chat.phases.1.duration=${SAT_STEADY}s" \
                --server-pid "$(cat "$out/cluster/edge-$((11 + w)).pid")" \
                --json "$out/cluster-chat-$r-w$w.json" -q >"$out/cluster-chat-$r-w$w.txt" 2>&1 &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p" || true; done
        for w in 0 1; do
            { echo "{\"gen\": \"$(tail -1 "$out/cluster-chat-$r-w$w.gentime")\"}"; } >"$out/cluster-chat-$r-w$w.time"
            rm -f "$out/cluster-chat-$r-w$w.gentime"
        done
        after=$(redis_requests)
        cluster_cpu >"$out/cluster-chat-$r.cpu1"
        redis-cli -p 27079 INFO commandstats >"$out/cluster-chat-$r.redis1" 2>/dev/null || true
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        "$LOAD" merge "$out/cluster-chat-$r-w0.json" "$out/cluster-chat-$r-w1.json" \
            --json "$out/cluster-chat-$r.json" >"$out/cluster-chat-$r.txt" 2>&1 || true
        echo "{\"redis_before\": $before, \"redis_after\": $after}" >"$out/cluster-chat-$r.redis"
    done
    LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=27000 deploy/local-cluster.sh down >/dev/null
    metrics cluster-table "$out"
}

# ---------------------------------------------------------------- many connections

conns_bench() {
    local hn
    hn=$(ulimit -Hn)
    # One process: as many connections as its descriptor limit allows (a few hundred are
    # kept for the store, listeners and logs).
    local n1=$((hn - 500))
    [ "$n1" -gt "$IDLE_MAX" ] && n1=$IDLE_MAX
    SERVER_NAME=rookery
    start_server rookery nomam
    provision_n rookery "$IDLE_MAX"
    log "single process: $n1 idle connections (ulimit -Hn $hn)"
    local workers=$(((n1 + hn - 1000) / (hn - 1000)))
    # shellcheck disable=SC2046
    load "conns-single-$n1" loadtest/scenarios/idle-50k.toml --set "idle.connections=$n1" \
        --set "users.count=$IDLE_MAX" --set users.prefix=cmp --set users.password=cmp-password-1 \
        --set 'target.sasl=["SCRAM-SHA-1"]' --set target.stream_management=false --set idle.login_rate=500 \
        --set idle.hold=60s --set "idle.pass=[\"failed == 0\", \"disconnects == 0\", \"stream_errors == 0\", \"open_at_end >= $n1\"]" \
        --workers "$workers" || true
    stop_server
    if [ "$n1" -ge "$IDLE_MAX" ]; then return 0; fi

    # Three edges of the loopback cluster, each below the limit, IDLE_MAX in total.
    log "cluster: $IDLE_MAX idle connections over three edges"
    ROOKERY_LIMITS_MAX_CONNECTIONS_PER_IP=100000 ROOKERY_LOG_LEVEL=warn ROOKERY_BIN=$ROOKERY \
        LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=27000 \
        deploy/local-cluster.sh up >"$out/cluster/up.txt"
    third_edge
    if [ ! -f "$out/cluster/provisioned-$IDLE_MAX" ]; then
        "$LOAD" provision loadtest/scenarios/idle-50k.toml --method admin --admin-url http://127.0.0.1:27081 \
            --admin-token-file "$out/cluster/router-1/admin.token" --set "users.count=$IDLE_MAX" \
            --set users.prefix=cmp --set users.password=cmp-password-1 >"$out/cluster/provision-idle.txt" 2>&1
        touch "$out/cluster/provisioned-$IDLE_MAX"
    fi
    local ports=(27022 27032 27042) pidf=(edge-11 edge-12 edge-13) pids=() w start
    cluster_cpu >"$out/conns-cluster.before"
    start=$(($(date +%s) + 5))
    for w in 0 1 2; do
        "$LOAD" run loadtest/scenarios/idle-50k.toml --worker "$w/3" --start-at "$start" \
            --set "target.address=127.0.0.1:${ports[$w]}" --set "idle.connections=$IDLE_MAX" \
            --set "users.count=$IDLE_MAX" --set users.prefix=cmp --set users.password=cmp-password-1 \
            --set 'target.sasl=["SCRAM-SHA-1"]' --set target.stream_management=false \
            --set idle.login_rate=500 --set idle.hold=60s \
            --server-pid "$(cat "$out/cluster/${pidf[$w]}.pid")" \
            --json "$out/conns-cluster-w$w.json" -q >"$out/conns-cluster-w$w.txt" 2>&1 &
        pids+=($!)
    done
    # RSS of every process 30 s into the hold (the logins take IDLE_MAX / 500 seconds).
    sleep $((5 + IDLE_MAX / 500 + 30))
    cluster_cpu >"$out/conns-cluster.held"
    for p in "${pids[@]}"; do wait "$p" || true; done
    "$LOAD" merge "$out"/conns-cluster-w{0,1,2}.json --json "$out/conns-cluster.json" >"$out/conns-cluster.txt" 2>&1 || true
    kill -TERM "$EXTRA_EDGE" 2>/dev/null || true
    LOCAL_CLUSTER_DIR=$out/cluster LOCAL_CLUSTER_BASE_PORT=27000 deploy/local-cluster.sh down >/dev/null
    EXTRA_EDGE=""
}

provision_n() { # server count: the accounts of the many-connections run
    local s=$1 n=$2
    [ -f "$out/$s/provisioned-$n" ] && return 0
    log "provisioning $n accounts on $s"
    "$LOAD" provision loadtest/scenarios/idle-50k.toml --method admin --admin-url "http://127.0.0.1:$RK_HTTP" \
        --admin-token-file "$out/rookery/data/admin.token" --set "users.count=$n" --set "idle.connections=$n" --set users.prefix=cmp \
        --set users.password=cmp-password-1 >"$out/$s/provision-$n.txt" 2>&1
    touch "$out/$s/provisioned-$n"
}

# A third edge next to deploy/local-cluster.sh's two, configured like them (ports 27042,
# 27043, 27093; node 13).
third_edge() {
    local d=$out/cluster/edge-13
    mkdir -p "$d"
    sed -e 's/27032/27042/; s/27033/27043/; s/27092/27093/; s/node_id = 12/node_id = 13/' \
        -e "s#edge-12#edge-13#" "$out/cluster/edge-12/rookery.toml" >"$d/rookery.toml"
    (
        ulimit -n "$(ulimit -Hn)"
        ROOKERY_LIMITS_MAX_CONNECTIONS_PER_IP=100000 ROOKERY_LOG_LEVEL=warn \
            exec "$ROOKERY" edge --config "$d/rookery.toml" >>"$out/cluster/edge-13.log" 2>&1
    ) &
    EXTRA_EDGE=$!
    echo "$EXTRA_EDGE" >"$out/cluster/edge-13.pid"
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:27093/health/ready)" = 200 ] && return 0
        sleep 0.2
    done
    echo "third edge did not become ready; see $out/cluster/edge-13.log" >&2
    return 1
}

# ---------------------------------------------------------------- report

write_metrics_py() {
    mkdir -p "$out"
    cat >"$out/metrics.py" <<'PY'
"""Figures of loadtest/compare.sh runs, from rookery-load's JSON reports.

sat-pass JSON RAMP RATE          exit 0 when the saturation criteria hold
best-rate OUTDIR PREFIX          highest passing saturation rate (0 if none)
table OUTDIR                     summary.json and table.md (printed)
"""
import glob, json, os, sys

def load(p):
    with open(p) as f:
        return json.load(f)

def steady(rep, ramp, kind="chat"):
    """Completions/s (delivered messages, established logins) and server CPU-s per 100k of
    them over the whole seconds of the steady phase, which follows a ramp of `ramp` seconds
    and lasts the rest of the load (the first and the last, partial, seconds are left out)."""
    steady_s = round(rep["scenarios"][kind]["load_seconds"]) - ramp
    ts = [e for e in rep.get("timeseries", []) if e["scenarios"].get(kind, {}).get("offered", 0) > 0]
    win = ts[ramp + 1: ramp + steady_s]
    if not win:
        return 0.0, None
    done = sum(e["scenarios"][kind]["completed"] for e in win)
    rate = done / len(win)
    cpu = None
    samples = {s["t"]: s["cpu_s"] for s in (rep.get("server") or {}).get("samples", [])}
    t0, t1 = win[0]["t"] - 1, win[-1]["t"]
    if t0 in samples and t1 in samples and done > 0:
        cpu = (samples[t1] - samples[t0]) / done * 1e5
    return rate, cpu

def chat(rep):
    c = rep["scenarios"]["chat"]
    return c["counters"], c["latency"]

def sat_pass(rep, ramp, rate):
    n, lat = chat(rep)
    d_rate, _ = steady(rep, ramp)
    return (n.get("lost", 0) == 0 and n.get("setup_failures", 0) == 0 and lat["count"] > 0
            and lat["p99_us"] < 50_000 and d_rate >= 0.95 * rate)

def runs(out, prefix, what):
    res = {}
    for p in glob.glob(os.path.join(out, f"{prefix}-{what}-*.json")):
        try:
            res[int(p.rsplit("-", 1)[1][:-5])] = load(p)
        except (ValueError, json.JSONDecodeError):
            pass
    return dict(sorted(res.items()))

def timing(path):
    try:
        return load(path[:-5] + ".time")
    except (OSError, json.JSONDecodeError):
        return {}

def gen_bound(t):
    """The generator used 90 % or more of its core (pinned runs): the offered load may have
    been late, and a failure may be the generator's."""
    return bool(t.get("gen_cpu_s") and t.get("wall_s") and t["gen_cpu_s"] >= 0.9 * t["wall_s"])

def sat_series(out, prefix, ramp):
    series = []
    for rate, rep in runs(out, prefix, "sat").items():
        n, lat = chat(rep)
        d_rate, cpu = steady(rep, ramp)
        t = timing(os.path.join(out, f"{prefix}-sat-{rate}.json"))
        series.append({
            "rate": rate, "pass": sat_pass(rep, ramp, rate), "delivered_per_s": round(d_rate),
            "p50_ms": lat["p50_us"] / 1000, "p99_ms": lat["p99_us"] / 1000, "lost": n.get("lost", 0),
            "cpu_s_per_100k": cpu, "gen_cpu_s": t.get("gen_cpu_s"), "wall_s": t.get("wall_s"),
            "machine_cpu_s": t.get("machine_cpu_s"), "server_cpu_s": (rep.get("server") or {}).get("cpu_seconds"),
            "gen_bound": gen_bound(t),
        })
    return series

def best_rate(out, prefix, ramp=2):
    best = 0
    for s in sat_series(out, prefix, ramp):
        if not s["pass"]:
            break
        best = s["rate"]
    return best

def summary(out):
    servers = ["rookery", "prosody", "ejabberd"]
    modes = ["nomam", "mam"]
    res = {}
    for s in servers:
        for m in modes:
            p = f"{s}-{m}"
            r = {}
            f = os.path.join(out, f"{p}-chat.json")
            if os.path.exists(f):
                rep = load(f)
                n, lat = chat(rep)
                srv = rep.get("server") or {}
                r["chat"] = {"p50_ms": lat["p50_us"] / 1000, "p99_ms": lat["p99_us"] / 1000, "sent": n.get("sent"),
                             "delivered": n.get("delivered"), "lost": n.get("lost"), "errors": n.get("errors"),
                             "cpu_s": srv.get("cpu_seconds"), "peak_rss_mib": srv.get("peak_rss_bytes", 0) / 2**20,
                             "steady": steady(rep, 5)}
            series = sat_series(out, p, 2)
            if series:
                best = 0
                first_fail = None
                for x in series:
                    if x["pass"]:
                        best = x["rate"]
                    else:
                        first_fail = x
                        break
                r["saturation"] = {"series": series, "best": best, "first_fail": first_fail}
            for h, rep in runs(out, p, "half").items():
                n, lat = chat(rep)
                r["half"] = {"rate": h, "p50_ms": lat["p50_us"] / 1000, "p99_ms": lat["p99_us"] / 1000,
                             "p999_ms": lat["p999_us"] / 1000, "lost": n.get("lost", 0),
                             "delivered_per_s": round(steady(rep, 2)[0])}
            f = os.path.join(out, f"{p}-idle.json")
            if os.path.exists(f):
                rep = load(f)
                srv = rep.get("server") or {}
                sc = rep["scenarios"]["idle"]
                open_ = sc["counters"].get("open_at_end", 0)
                samples = srv.get("samples", [])
                # RSS at the end of the hold: the last sample before the connections close.
                end_t = int(sc["load_seconds"]) - 1
                with_conns = max((x["rss_bytes"] for x in samples if x["t"] <= end_t), default=0)
                at_end = [x["rss_bytes"] for x in samples if x["t"] == end_t]
                before = srv.get("start_rss_bytes", 0)
                rss_end = at_end[0] if at_end else with_conns
                r["idle"] = {"open_at_end": open_, "failed": sc["counters"].get("failed", 0),
                             "disconnects": sc["counters"].get("disconnects", 0),
                             "rss_before_mib": before / 2**20, "rss_with_mib": rss_end / 2**20,
                             "per_10k_mib": (rss_end - before) / 2**20 * 10000 / open_ if open_ else None,
                             "per_conn_kib": (rss_end - before) / 1024 / open_ if open_ else None}
            logins = []
            for rate, rep in runs(out, p, "login").items():
                sc = rep["scenarios"]["login"]
                n = sc["counters"]
                att = n.get("attempts", 0)
                fr = n.get("failed", 0) / att if att else 1.0
                p99 = sc["latency"]["p99_us"] / 1000
                t = timing(os.path.join(out, f"{p}-login-{rate}.json"))
                logins.append({"rate": rate, "pass": fr < 0.001 and p99 < 1000 and sc["latency"]["count"] > 0,
                               "achieved_per_s": round(steady(rep, 2, "login")[0]),
                               "failure_ratio": fr, "p99_ms": p99, "gen_cpu_s": t.get("gen_cpu_s"),
                               "wall_s": t.get("wall_s"),
                               "server_cpu_s": (rep.get("server") or {}).get("cpu_seconds")})
            if logins:
                best = 0
                for x in logins:
                    if not x["pass"]:
                        break
                    best = x["rate"]
                r["login"] = {"series": logins, "best": best}
            if r:
                res[p] = r
    # CPU per 100k at the highest rate every server passed, per mode.
    common = {}
    for m in modes:
        passed = []
        for s in servers:
            sat = res.get(f"{s}-{m}", {}).get("saturation")
            if sat:
                passed.append({x["rate"] for x in sat["series"] if x["pass"]})
        rate = max(set.intersection(*passed)) if passed and set.intersection(*passed) else None
        common[m] = rate
        for s in servers:
            r = res.get(f"{s}-{m}", {})
            sat = r.get("saturation")
            if sat and rate:
                x = [y for y in sat["series"] if y["rate"] == rate]
                sat["cpu_at_common"] = x[0]["cpu_s_per_100k"] if x else None
            elif sat and "chat" in r:
                # No saturation step passed by all: the fixed-load chat run is the highest
                # common load.
                sat["cpu_at_common"] = r["chat"]["steady"][1]
        if rate is None:
            common[m] = "fixed"
    res["_common_rate"] = common
    return res

def fmt(v, d=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{d}f}"
    return f"{v:,}"

def table(res):
    cols = [k for k in [f"{s}-{m}" for m in ["nomam", "mam"] for s in ["rookery", "prosody", "ejabberd"]] if k in res]
    name = {"nomam": "archive off", "mam": "archive on"}
    head = "| metric | " + " | ".join(f"{c.split('-')[0].capitalize()}, {name[c.split('-')[1]]}" for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]

    def row(label, f):
        vals = []
        for c in cols:
            try:
                vals.append(f(res[c]))
            except (KeyError, TypeError, IndexError, StopIteration):
                vals.append("–")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    row("chat at fixed load: p50 ms", lambda r: fmt(r["chat"]["p50_ms"], 2))
    row("chat at fixed load: p99 ms", lambda r: fmt(r["chat"]["p99_ms"], 2))
    row("chat at fixed load: lost / sent", lambda r: f'{r["chat"]["lost"]:,} / {r["chat"]["sent"]:,}')
    row("chat at fixed load: server CPU-s (whole run, incl. 2000 logins)", lambda r: fmt(r["chat"]["cpu_s"], 2))
    row("chat at fixed load: server CPU-s per 100k msgs (steady window)", lambda r: fmt(r["chat"]["steady"][1], 2))
    row("chat at fixed load: server peak RSS MiB", lambda r: fmt(r["chat"]["peak_rss_mib"], 1))
    row("saturation: highest passing rate, msgs/s delivered",
        lambda r: fmt(r["saturation"]["best"]) if r["saturation"]["best"] else f'< {r["saturation"]["series"][0]["rate"]:,}')
    row("saturation: p99 ms at that rate", lambda r: fmt(next(x["p99_ms"] for x in r["saturation"]["series"] if x["rate"] == r["saturation"]["best"]), 2))
    row("saturation: first failing offered rate → delivered msgs/s, p99 ms",
        lambda r: (f'{r["saturation"]["first_fail"]["rate"]:,} → {r["saturation"]["first_fail"]["delivered_per_s"]:,}, '
                   f'{r["saturation"]["first_fail"]["p99_ms"]:,.0f}' + (" (generator-bound)" if r["saturation"]["first_fail"]["gen_bound"] else ""))
        if r["saturation"]["first_fail"] else "none failed")
    row("server CPU-s per 100k msgs at the common rate (see below)", lambda r: fmt(r["saturation"]["cpu_at_common"], 2))
    row("half of saturation: rate, p50 / p99 ms", lambda r: f'{r["half"]["rate"]:,}: {r["half"]["p50_ms"]:.2f} / {r["half"]["p99_ms"]:.2f}')
    row("idle 10k: open at end / failed", lambda r: f'{r["idle"]["open_at_end"]:,} / {r["idle"]["failed"]:,}')
    row("idle 10k: RSS before → with connections, MiB", lambda r: f'{r["idle"]["rss_before_mib"]:.1f} → {r["idle"]["rss_with_mib"]:.1f}')
    row("idle: server RSS per 10k connections, MiB", lambda r: fmt(r["idle"]["per_10k_mib"], 1))
    row("idle: server RSS per connection, KiB", lambda r: fmt(r["idle"]["per_conn_kib"], 1))
    row("logins/s (failures < 0.1 %, p99 < 1 s)",
        lambda r: fmt(r["login"]["best"]) + (" (highest step tried)" if r["login"]["series"][-1]["pass"] else ""))
    row("login storm: p99 ms at that rate", lambda r: fmt(next(x["p99_ms"] for x in r["login"]["series"] if x["rate"] == r["login"]["best"]), 1))
    cr = res.get("_common_rate", {})
    lines.append("")
    lines.append("Common rate (highest saturation step every server passed): "
                 + ", ".join(f"{name[m]} " + (f"{v:,} msgs/s" if isinstance(v, int) else
                             "none, so the fixed-load chat run is used") for m, v in cr.items()) + ".")
    return "\n".join(lines)

def series_table(res):
    lines = ["| run | offered msgs/s | delivered msgs/s (steady) | p50 ms | p99 ms | lost | server CPU-s per 100k | generator CPU-s / wall s | pass |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k, r in res.items():
        if k.startswith("_"):
            continue
        for x in r.get("saturation", {}).get("series", []):
            lines.append(f'| {k} | {x["rate"]:,} | {x["delivered_per_s"]:,} | {x["p50_ms"]:.2f} | {x["p99_ms"]:.2f} | '
                         f'{x["lost"]:,} | {fmt(x["cpu_s_per_100k"], 2)} | {fmt(x["gen_cpu_s"], 1)} / {fmt(x["wall_s"], 1)}'
                         f'{" (bound)" if x["gen_bound"] else ""} | {"yes" if x["pass"] else "no"} |')
    lines += ["", "| run | offered logins/s | established/s (steady) | failure ratio | p99 ms | server CPU-s | generator CPU-s / wall s | pass |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for k, r in res.items():
        if k.startswith("_"):
            continue
        for x in r.get("login", {}).get("series", []):
            lines.append(f'| {k} | {x["rate"]:,} | {x["achieved_per_s"]:,} | {x["failure_ratio"]:.4f} | {x["p99_ms"]:,.1f} | '
                         f'{fmt(x["server_cpu_s"], 1)} | {fmt(x["gen_cpu_s"], 1)} / {fmt(x["wall_s"], 1)} | {"yes" if x["pass"] else "no"} |')
    return "\n".join(lines)

def procs(path):
    """name -> (cpu_s, rss_kib) from a cluster_cpu snapshot."""
    res = {}
    try:
        with open(path) as f:
            for line in f:
                n, cpu, rss = line.split()
                res[n] = (float(cpu), int(rss))
    except OSError:
        pass
    return res

def cluster_table(out):
    try:
        with open(os.path.join(out, "cluster-mam")) as f:
            arch = "archiving on" if f.read().strip() == "true" else "archiving off"
    except OSError:
        arch = "archiving on"
    lines = ["| setup | offered msgs/s | delivered msgs/s (steady) | p50 ms | p99 ms | lost | server CPU-s per 100k (steady) | Redis requests | Redis requests per delivered msg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    res = {}
    for rate, rep in runs(out, "single", "chat").items():
        n, lat = chat(rep)
        d, cpu = steady(rep, 2)
        res[f"single-{rate}"] = {"delivered_per_s": d, "p50_ms": lat["p50_us"] / 1000, "p99_ms": lat["p99_us"] / 1000,
                                 "lost": n.get("lost", 0), "delivered": n.get("delivered", 0), "cpu_s_per_100k": cpu}
        lines.append(f'| single binary (`rookery serve`), {arch} | {rate:,} | {round(d):,} | {lat["p50_us"]/1000:.2f} | {lat["p99_us"]/1000:.2f} | '
                     f'{n.get("lost", 0):,} | {fmt(cpu, 2)} | – | – |')
    for rate, rep in runs(out, "cluster", "chat").items():
        n, lat = chat(rep)
        d = 0.0
        for w in (0, 1):
            try:
                d += steady(load(os.path.join(out, f"cluster-chat-{rate}-w{w}.json")), 2)[0]
            except OSError:
                pass
        red = load(os.path.join(out, f"cluster-chat-{rate}.redis"))
        reqs = red["redis_after"] - red["redis_before"]
        c0, c1 = procs(os.path.join(out, f"cluster-chat-{rate}.cpu0")), procs(os.path.join(out, f"cluster-chat-{rate}.cpu1"))
        cpu_by = {k: round(c1[k][0] - c0[k][0], 2) for k in c1 if k in c0}
        delivered = n.get("delivered", 0)
        cpu100k = sum(cpu_by.values()) / delivered * 1e5 if delivered else None
        # Window: the second half of the steady phase (the routers are still busy with the
        # 2000 logins' registry writes and presence for several seconds after the load
        # starts). Redis requests and cluster CPU from the per-second samples, delivered
        # messages from both workers' time series over the same seconds.
        win_reqs = win_cpu = win_done = None
        try:
            smp = []
            with open(os.path.join(out, f"cluster-chat-{rate}.samples")) as f:
                for line in f:
                    a = line.split()
                    if len(a) == 3:
                        smp.append((int(a[0]), float(a[1]), float(a[2])))
            win_done = 0
            bounds = None
            for w in (0, 1):
                wr = load(os.path.join(out, f"cluster-chat-{rate}-w{w}.json"))
                ts = [e for e in wr["timeseries"] if e["scenarios"]["chat"]["offered"] > 0]
                steady_s = round(wr["scenarios"]["chat"]["load_seconds"]) - 2
                win = ts[2 + steady_s // 2: 2 + steady_s]
                win_done += sum(e["scenarios"]["chat"]["completed"] for e in win)
                if w == 0:
                    bounds = (wr["started_unix_ms"] + (win[0]["t"] - 1) * 1000, wr["started_unix_ms"] + win[-1]["t"] * 1000)

            def at(t, i):
                # Samples are about a second apart; the window may end up to 2 s after the
                # last one (the workers exit right after the load), which then stands in.
                if smp and smp[-1][0] < t <= smp[-1][0] + 2000:
                    t = smp[-1][0]
                before = [x for x in smp if x[0] <= t]
                after = [x for x in smp if x[0] >= t]
                if not before or not after:
                    raise ValueError("window outside the samples")
                a, b = before[-1], after[0]
                if b[0] == a[0]:
                    return a[i]
                return a[i] + (b[i] - a[i]) * (t - a[0]) / (b[0] - a[0])
            win_reqs = at(bounds[1], 1) - at(bounds[0], 1)
            win_cpu = at(bounds[1], 2) - at(bounds[0], 2)
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
        res[f"cluster-{rate}"] = {"delivered_per_s": d, "p50_ms": lat["p50_us"] / 1000, "p99_ms": lat["p99_us"] / 1000,
                                  "lost": n.get("lost", 0), "delivered": delivered, "redis_requests": reqs,
                                  "redis_per_msg": reqs / delivered if delivered else None, "cpu_by_process": cpu_by,
                                  "cpu_s_per_100k_whole_run": cpu100k, "steady_redis_requests": win_reqs,
                                  "steady_delivered": win_done, "steady_cpu_s": win_cpu}
        ok = win_done and win_reqs is not None
        wcpu = win_cpu / win_done * 1e5 if ok else None
        wreq = win_reqs / win_done if ok else None
        lines.append(f'| loopback cluster (2 routers, 2 edges, Redis), {arch} | {rate:,} | {round(d):,} | {lat["p50_us"]/1000:.2f} | '
                     f'{lat["p99_us"]/1000:.2f} | {n.get("lost", 0):,} | {fmt(wcpu, 2)} (all 5 processes) | '
                     f'{fmt(win_reqs, 0)} in the window; {reqs:,} in the whole run | '
                     f'{fmt(wreq, 4)} in the window; {reqs / delivered if delivered else 0:.3f} whole run (logins included) |')
    with open(os.path.join(out, "cluster-summary.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "cluster-table.md"), "w") as f:
        f.write(text)
    print(text)
    for k, v in res.items():
        if "cpu_by_process" in v:
            print(f"{k}: CPU-s by process during the run (logins included): {v['cpu_by_process']}")

def main():
    cmd = sys.argv[1]
    if cmd == "cluster-table":
        cluster_table(sys.argv[2])
        return
    if cmd == "sat-pass":
        rep = load(sys.argv[2])
        sys.exit(0 if sat_pass(rep, int(sys.argv[3]), int(sys.argv[4])) else 1)
    if cmd == "best-rate":
        print(best_rate(sys.argv[2], sys.argv[3]))
        return
    if cmd == "table":
        out = sys.argv[2]
        res = summary(out)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(res, f, indent=1)
        text = table(res) + "\n\n" + series_table(res) + "\n"
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(text)
        print(text)

main()
PY
}

case $cmd in
run)
    write_metrics_py
    prepare
    log "results in $out"
    for s in $SERVERS; do
        for m in $MODES; do
            run_server_mode "$s" "$m"
        done
    done
    metrics table "$out"
    ;;
cluster)
    write_metrics_py
    prepare
    cluster_bench
    ;;
conns)
    write_metrics_py
    prepare
    conns_bench
    ;;
table)
    write_metrics_py
    metrics table "$out"
    ;;
esac
