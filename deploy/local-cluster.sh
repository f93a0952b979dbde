#!/usr/bin/env bash
# A Rookery cluster on this machine's loopback: redis-server (session registry), two
# routers, two edges, one shared SQLite store. For trying cluster mode, not for production
# (see docs/cluster.md and the Helm chart for that).
#
#   deploy/local-cluster.sh up [DOMAIN]   build, start everything, print the edges' addresses
#   deploy/local-cluster.sh status        what runs, and each process's readiness
#   deploy/local-cluster.sh down          stop everything (data is kept; `rm -rf` the dir to reset)
#
# Environment: LOCAL_CLUSTER_DIR (default ./.local-cluster), LOCAL_CLUSTER_BASE_PORT
# (default 17000; ports BASE..BASE+99 are used), ROOKERY_BIN (default: build with cargo).
set -euo pipefail

cmd=${1:-}
domain=${2:-localhost}
dir=$(realpath -m "${LOCAL_CLUSTER_DIR:-.local-cluster}")
base=${LOCAL_CLUSTER_BASE_PORT:-17000}
redis_port=$((base + 79))
router_grpc=($((base + 1)) $((base + 2)))
router_http=($((base + 81)) $((base + 82)))
edge_c2s=($((base + 22)) $((base + 32)))
edge_tls=($((base + 23)) $((base + 33)))
edge_http=($((base + 91)) $((base + 92)))

ready() { # url -> 0 when /health/ready answers 200
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/health/ready" 2>/dev/null)" = 200 ]
}

wait_ready() { # name url log
    for _ in $(seq 150); do
        if ready "$2"; then return 0; fi
        sleep 0.2
    done
    echo "$1 did not become ready; its log ($3):" >&2
    tail -20 "$3" >&2
    exit 1
}

start() { # name role config
    local log="$dir/$1.log"
    nohup "$bin" "$2" --config "$3" >>"$log" 2>&1 &
    echo $! >"$dir/$1.pid"
}

stop_pid() { # pidfile
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

common() { # data_dir
    cat <<EOF
domains = ["$domain"]
data_dir = "$1"

[storage]
backend = "sqlite"

[storage.sqlite]
path = "$dir/shared.sqlite3"
EOF
}

case $cmd in
up)
    if ! command -v redis-server >/dev/null; then
        echo "installing redis-server (Debian package)..." >&2
        if [ "$(id -u)" = 0 ]; then apt-get install -y -q redis-server >/dev/null
        else sudo apt-get install -y -q redis-server >/dev/null; fi
    fi
    if [ -n "${ROOKERY_BIN:-}" ]; then
        bin=$ROOKERY_BIN
        unset ROOKERY_BIN # rookery refuses unknown ROOKERY_* variables in its environment
    else
        cargo build -q -p rookery
        bin=$(realpath target/debug/rookery)
    fi
    mkdir -p "$dir"
    if [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
        echo "already up (deploy/local-cluster.sh down first)" >&2
        exit 1
    fi
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    for i in 0 1; do
        n=$((i + 1))
        d="$dir/router-$n"
        mkdir -p "$d"
        { common "$d"; cat <<EOF

[listen]
c2s = "off"
c2s_tls = "off"
http = "127.0.0.1:${router_http[$i]}"

[cluster]
node_id = $n
grpc = "127.0.0.1:${router_grpc[$i]}"
redis = ["redis://127.0.0.1:$redis_port"]
EOF
        } >"$d/rookery.toml"
        start "router-$n" router "$d/rookery.toml"
    done
    for i in 0 1; do
        wait_ready "router-$((i + 1))" "http://127.0.0.1:${router_http[$i]}" "$dir/router-$((i + 1)).log"
    done
    for i in 0 1; do
        n=$((i + 11))
        d="$dir/edge-$n"
        mkdir -p "$d"
        { common "$d"; cat <<EOF

[listen]
c2s = "127.0.0.1:${edge_c2s[$i]}"
c2s_tls = "127.0.0.1:${edge_tls[$i]}"
http = "127.0.0.1:${edge_http[$i]}"

[cluster]
node_id = $n
routers = ["127.0.0.1:${router_grpc[0]}", "127.0.0.1:${router_grpc[1]}"]
redis = ["redis://127.0.0.1:$redis_port"]
EOF
        } >"$d/rookery.toml"
        start "edge-$n" edge "$d/rookery.toml"
    done
    for i in 0 1; do
        wait_ready "edge-$((i + 11))" "http://127.0.0.1:${edge_http[$i]}" "$dir/edge-$((i + 11)).log"
    done
    echo "Rookery cluster for $domain is up (files in $dir):"
    for i in 0 1; do
        echo "  edge-$((i + 11))  c2s 127.0.0.1:${edge_c2s[$i]} (STARTTLS), 127.0.0.1:${edge_tls[$i]} (direct TLS)"
    done
    echo "  routers  gRPC 127.0.0.1:${router_grpc[0]}, 127.0.0.1:${router_grpc[1]}; redis 127.0.0.1:$redis_port"
    echo "Add a user (through router-1's admin API):"
    echo "  $bin user --config $dir/router-1/rookery.toml add alice@$domain --password secret"
    ;;
status)
    for name in redis router-1 router-2 edge-11 edge-12; do
        pidf="$dir/$name.pid"
        if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then state="running (pid $(cat "$pidf"))"
        else state="stopped"; fi
        echo "$name: $state"
    done
    for i in 0 1; do
        ready "http://127.0.0.1:${router_http[$i]}" && r=ready || r="not ready"
        echo "router-$((i + 1)) $r"
    done
    for i in 0 1; do
        ready "http://127.0.0.1:${edge_http[$i]}" && r=ready || r="not ready"
        echo "edge-$((i + 11)) $r"
    done
    ;;
down)
    # Edges first: they close their clients' streams and leave the registry cleanly.
    for name in edge-11 edge-12 router-1 router-2; do stop_pid "$dir/$name.pid"; done
    if [ -f "$dir/redis.pid" ]; then
        kill -TERM "$(cat "$dir/redis.pid")" 2>/dev/null || true
        rm -f "$dir/redis.pid"
    fi
    echo "stopped (data kept in $dir)"
    ;;
*)
    echo "usage: $0 up [DOMAIN] | status | down" >&2
    exit 2
    ;;
esac
