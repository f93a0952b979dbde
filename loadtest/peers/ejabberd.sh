#!/usr/bin/env bash
# Runs a throwaway ejabberd (Debian package) on loopback for load comparisons.
#   ejabberd.sh start DIR PORT mam|nomam   -> prints the server (beam.smp) PID
#   ejabberd.sh stop DIR
# The node runs as the calling user (see EXEC_CMD below); DIR is also handed to the
# `ejabberd` user, as Debian's ejabberdctl would run it.
# Archiving uses Mnesia (the package default). Users are created by in-band
# registration with the per-IP registration timeout switched off.
set -euo pipefail
cmd=$1 dir=$2
node="ejload$(printf %s "$dir" | cksum | cut -d' ' -f1)@localhost"
case $cmd in
start)
    port=$3 mam=$4
    command -v ejabberdctl >/dev/null || { echo "ejabberd is not installed (apt-get install ejabberd)" >&2; exit 2; }
    mkdir -p "$dir/db" "$dir/log"
    if [ ! -f "$dir/cert.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/crt.pem" -days 30 \
            -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null
        cat "$dir/crt.pem" "$dir/key.pem" > "$dir/cert.pem"
    fi
    mammod=""
    [ "$mam" = mam ] && mammod=$'  mod_mam:\n    db_type: mnesia\n    default: always'
    cat > "$dir/ejabberd.yml" <<CFG
hosts:
  - localhost
loglevel: warning
certfiles:
  - $dir/cert.pem
registration_timeout: infinity
listen:
  -
    port: $port
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    backlog: 128
    shaper: none
    access: c2s
    starttls_required: true
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  register:
    allow: all
shaper: {}
shaper_rules: {}
auth_method: internal
auth_password_format: scram
modules:
  mod_disco: {}
  mod_roster: {}
  mod_ping: {}
  mod_stream_mgmt: {}
  mod_blocking: {}
  mod_privacy: {}
  mod_register:
    access: register
    ip_access: all
    password_strength: 0
$mammod
CFG
    # Debian's ejabberdctl.cfg pins EJABBERD_CONFIG_PATH to /etc and would override --config.
    grep -v '^EJABBERD_CONFIG_PATH\|^EJABBERD_PID_PATH' /etc/ejabberd/ejabberdctl.cfg > "$dir/ejabberdctl.cfg"
    # ejabberdctl switches to the ejabberd user with su, whose pam_limits resets the soft
    # descriptor limit to 1024 (about 1000 connections). Run the node as the calling user
    # instead, so it keeps the limit raised below (this file is sourced after that choice).
    echo 'EXEC_CMD=as_current_user' >> "$dir/ejabberdctl.cfg"
    chown -R ejabberd:ejabberd "$dir"
    (ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
     export HOME=$dir ERL_MAX_PORTS=250000
     exec ejabberdctl --ctl-config "$dir/ejabberdctl.cfg" --config "$dir/ejabberd.yml" --spool "$dir/db" --logs "$dir/log" --node "$node" foreground \
        >"$dir/stdout.log" 2>&1) &
    for _ in $(seq 150); do
        if ss -ltn "sport = :$port" | grep -q LISTEN; then
            pgrep -f "beam.smp.*$node" | head -1
            exit 0
        fi
        sleep 0.2
    done
    echo "ejabberd did not start; see $dir/stdout.log" >&2
    exit 1
    ;;
stop)
    HOME=$dir ejabberdctl --ctl-config "$dir/ejabberdctl.cfg" --node "$node" stop >/dev/null 2>&1 || pkill -f "beam.smp.*$node" || true
    ;;
*) echo "usage: $0 start DIR PORT mam|nomam | stop DIR" >&2; exit 2 ;;
esac
