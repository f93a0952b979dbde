#!/usr/bin/env bash
# Two builds of rookery side by side in one run: the same chat scenarios (fixed load and a
# saturation series), archiving off and on, each build on a fresh data directory, one after
# the other on the same pinned cores (loadtest/compare.sh does the measuring).
#
#   loadtest/versions.sh BEFORE_BINARY [AFTER_BINARY] [OUTDIR]
#
# AFTER_BINARY defaults to target/release/rookery (built first). OUTDIR defaults to
# loadtest/results/<date>-<time>-versions/, with before/ and after/ inside; the two tables
# are printed at the end. Environment as for compare.sh; defaults here: SCENARIOS="chat
# saturation", RATES="2000 5000 10000 20000", SAT_STEADY=15.
#
# ROUNDS=N (default 1) measures each build N times, alternating which goes first (before,
# after / after, before / ...), so that drift of the machine falls on both alike. The runs
# go to before-K/ and after-K/, and loadtest/medians.py prints the medians over the rounds
# of server CPU-s per 100k messages and of p99, per mode and rate, with the change in %.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

before=$(realpath "${1:?usage: $0 BEFORE_BINARY [AFTER_BINARY] [OUTDIR]}")
after=${2:-}
if [ -z "$after" ]; then
    cargo build --release -q -p rookery
    after=$root/target/release/rookery
fi
after=$(realpath "$after")
out=$(realpath -m "${3:-loadtest/results/$(date +%Y-%m-%d-%H%M)-versions}")
mkdir -p "$out"

export SERVERS=rookery
export SCENARIOS=${SCENARIOS:-chat saturation}
export RATES=${RATES:-2000 5000 10000 20000}
export SAT_STEADY=${SAT_STEADY:-15}

ROUNDS=${ROUNDS:-1}
for round in $(seq "$ROUNDS"); do
    order="before after"
    [ $((round % 2)) = 0 ] && order="after before"
    for which in $order; do
        bin=$before
        [ "$which" = after ] && bin=$after
        dir=$which
        [ "$ROUNDS" -gt 1 ] && dir=$which-$round
        echo "== round $round/$ROUNDS, $which: $bin" >&2
        RK_BIN=$bin loadtest/compare.sh run "$out/$dir" >"$out/$dir.table.md"
    done
done
if [ "$ROUNDS" -gt 1 ]; then
    python3 loadtest/medians.py "$out" "$ROUNDS" | tee "$out/medians.md"
    exit 0
fi
for which in before after; do
    echo "## $which"
    echo
    cat "$out/$which.table.md"
    echo
done
