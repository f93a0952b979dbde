#!/usr/bin/env bash
# Runs a throwaway Prosody (Debian package) on loopback for load comparisons.
#   prosody.sh start DIR PORT mam|nomam   -> prints the server PID
#   prosody.sh stop DIR
# Users are created by in-band registration (XEP-0077), which Prosody allows without
# throttling from loopback (mod_register_limits whitelists 127.0.0.1). TCP_NODELAY is on
# (network_settings.nagle = false), as in Rookery and ejabberd, and the Lua collector is
# generational: both keep Prosody's latency tail low (see docs/benchmarks.md).
set -euo pipefail
cmd=$1 dir=$2
case $cmd in
start)
    port=$3 mam=$4
    command -v prosody >/dev/null || { echo "prosody is not installed (apt-get install prosody)" >&2; exit 2; }
    mkdir -p "$dir/data"
    if [ ! -f "$dir/cert.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 30 \
            -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null
    fi
    mods='"disco"; "roster"; "saslauth"; "tls"; "blocklist"; "carbons"; "smacks"; "ping"; "register"; "posix"'
    [ "$mam" = mam ] && mods="$mods; \"mam\""
    cat > "$dir/prosody.cfg.lua" <<CFG
run_as_root = true
daemonize = false
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
interfaces = { "127.0.0.1" }
c2s_ports = { $port }
c2s_direct_tls_ports = { }
s2s_ports = { }
http_ports = { }
https_ports = { }
admins = { }
modules_enabled = { $mods }
modules_disabled = { "s2s" }
authentication = "internal_hashed"
allow_registration = true
c2s_require_encryption = true
default_archive_policy = true
-- Prosody leaves Nagle's algorithm on by default; with delayed ACKs that holds small
-- stanzas back by up to ~40 ms. Rookery and ejabberd set TCP_NODELAY, so do the same here.
network_settings = { nagle = false }
-- Lua 5.4's generational collector: with the default incremental one, collection pauses put
-- the p99 of 1:1 chat at 500 msg/s near 60 ms (p50 1.3 ms); generational brings it to ~2.5 ms.
gc = { mode = "generational" }
-- PBKDF2 iterations of new accounts' SCRAM keys: 4096 as in Rookery and ejabberd (Prosody's
-- default is 10000), so a client's first login costs the same against all three.
default_iteration_count = 4096
archive_expires_after = "never"
log = { warn = "$dir/prosody.log" }
ssl = { certificate = "$dir/cert.pem"; key = "$dir/key.pem" }
VirtualHost "localhost"
  ssl = { certificate = "$dir/cert.pem"; key = "$dir/key.pem" }
CFG
    (ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec prosody --config "$dir/prosody.cfg.lua" >"$dir/stdout.log" 2>&1) &
    for _ in $(seq 50); do
        if ss -ltn "sport = :$port" | grep -q LISTEN; then
            cat "$dir/prosody.pid" 2>/dev/null || pgrep -f "prosody --config $dir/prosody.cfg.lua" | head -1
            exit 0
        fi
        sleep 0.2
    done
    echo "prosody did not start; see $dir/stdout.log" >&2
    exit 1
    ;;
stop)
    pkill -f "prosody --config $dir/prosody.cfg.lua" || true
    ;;
*) echo "usage: $0 start DIR PORT mam|nomam | stop DIR" >&2; exit 2 ;;
esac
