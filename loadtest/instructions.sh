#!/usr/bin/env bash
# Instructions per delivered message, counted by valgrind (callgrind), for one or more builds
# of rookery: a figure that, unlike CPU seconds, does not move with whatever else the machine
# is doing, so two builds can be compared to the per cent on a shared 2-core machine.
#
#   loadtest/instructions.sh OUTDIR BINARY...
#
# For each binary and for archiving off and on: `rookery serve` under
# `valgrind --tool=callgrind` on a fresh data directory, the accounts created through the
# admin API (natively, not counted), then two chat runs of loadtest/scenarios/compare/chat.toml at the same rate
# (PAIRS pairs, RATE msgs/s), one of SHORT and one of LONG seconds, each on a freshly started
# server under callgrind, whose counters are zeroed once every user is bound. Per message =
# (instructions of the long run - of the short run) / (messages delivered in the long run -
# in the short run): what is left of the set-up and the shut-down costs the same in both and
# cancels out.
#
# Environment: PAIRS (200), RATE (100), SHORT (10), LONG (40), MODES ("nomam mam"),
# LOAD_BIN (rookery-load, default target/release/rookery-load).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

out=$(realpath -m "${1:?usage: $0 OUTDIR BINARY...}")
shift
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR BINARY..." >&2; exit 2; }
PAIRS=${PAIRS:-200}
RATE=${RATE:-100}
SHORT=${SHORT:-10}
LONG=${LONG:-40}
MODES=${MODES:-nomam mam}
LOAD=${LOAD_BIN:-$root/target/release/rookery-load}
SCN=$root/loadtest/scenarios/compare/chat.toml
C2S=26522
HTTP=26580
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$LOAD" ] || cargo build --release -q -p rookery-load

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
SERVER_PID=""
stop() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap stop EXIT

mkdir -p "$out/tls"
[ -f "$out/tls/cert.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 30 -keyout "$out/tls/key.pem" -out "$out/tls/cert.pem" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost" 2>/dev/null

start() { # bin dir mam [callgrind-out]: without the last, natively (provisioning)
    cat >"$2/rookery.toml" <<TOML
domains = ["localhost"]
data_dir = "$2/data"

[listen]
c2s = "127.0.0.1:$C2S"
c2s_tls = "off"
http = "127.0.0.1:$HTTP"

[tls]
cert = "$out/tls/cert.pem"
key = "$out/tls/key.pem"

[limits]
max_connections_per_ip = 100000

[mam]
enabled = $3

[log]
level = "warn"
TOML
    local vg=()
    [ -n "${4:-}" ] && vg=(valgrind --tool=callgrind --callgrind-out-file="$4" --dump-instr=no)
    "${vg[@]}" "$1" serve --config "$2/rookery.toml" >>"$2/rookery.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/health/ready")" = 200 ] && return 0
        sleep 0.5
    done
    echo "server did not start (see $2/rookery.log)" >&2
    exit 1
}

ir() { awk '/^summary:/ {print $2}' "$1"; }
delivered() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["scenarios"]["chat"]["latency"]["count"])' "$1"; }

n=0
for bin in "$@"; do
    n=$((n + 1))
    bin=$(realpath "$bin")
    for mode in $MODES; do
        mam=false
        [ "$mode" = mam ] && mam=true
        d=$out/$n-$mode
        rm -rf "$d"
        mkdir -p "$d"
        echo "$bin" >"$d/binary"
        log "$n ($bin) $mode: creating $((2 * PAIRS)) accounts"
        start "$bin" "$d" "$mam"
        "$LOAD" provision "$SCN" --method admin --admin-url "http://127.0.0.1:$HTTP" \
            --admin-token-file "$d/data/admin.token" --set "chat.pairs=$PAIRS" \
            --set "users.count=$((2 * PAIRS))" >"$d/provision.txt" 2>&1
        stop
        for len in "$SHORT" "$LONG"; do
            log "$n ($bin) $mode: ${len}s at $RATE msgs/s under callgrind"
            start "$bin" "$d" "$mam" "$d/callgrind.$len"
            "$LOAD" run "$SCN" --set "target.address=127.0.0.1:$C2S" --set "chat.pairs=$PAIRS" \
                --set "users.count=$((2 * PAIRS))" --set "chat.rate=$RATE" --set chat.phases.0.duration=2s \
                --set "chat.phases.1.duration=${len}s" --set run.setup_timeout=600s \
                --set target.login_timeout=600s --json "$d/load.$len.json" -q >"$d/load.$len.txt" 2>&1 &
            local_load=$!
            # The log-ins (TLS handshakes, whose count of signatures varies with session
            # resumption) are left out: the counters are zeroed once every user is bound,
            # which is when the chat starts.
            token=$(cat "$d/data/admin.token")
            for _ in $(seq 1200); do
                s=$(curl -s "http://127.0.0.1:$HTTP/admin/stats" -H "Authorization: Bearer $token" | jq '.sessions // 0')
                [ "$s" -ge $((2 * PAIRS)) ] && break
                sleep 0.1
            done
            callgrind_control -z "$SERVER_PID" >/dev/null 2>&1
            wait "$local_load" || true
            stop
        done
        python3 - "$d" "$SHORT" "$LONG" "$(ir "$d/callgrind.$SHORT")" "$(ir "$d/callgrind.$LONG")" \
            "$(delivered "$d/load.$SHORT.json")" "$(delivered "$d/load.$LONG.json")" <<'PY' | tee "$d/result.txt"
import sys
d, s, l, ir_s, ir_l, m_s, m_l = sys.argv[1:]
ir_s, ir_l, m_s, m_l = int(ir_s), int(ir_l), int(m_s), int(m_l)
per = (ir_l - ir_s) / (m_l - m_s)
print(f"{d}: {m_s} / {m_l} messages, {ir_s:,} / {ir_l:,} instructions, {per:,.0f} per message")
PY
    done
done
echo
echo "| binary | archiving | messages short / long | instructions per delivered message |"
echo "|---|---|---|---|"
for f in "$out"/*/result.txt; do
    d=$(dirname "$f")
    b=$(basename "$d")
    read -r _ ms _ ml _ < <(tr -d ',' <"$f")
    echo "| $(cat "$d/binary") | ${b#*-} | $ms / $ml | $(awk '{print $(NF-2)}' "$f") |"
done
