#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60) with libFuzzer.
# Exits non-zero as soon as a target crashes; the input is kept in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh 60                  # CI: one minute per target
#   FUZZ_JOBS=2 fuzz/run.sh 600     # longer, two processes per target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain the nightly flags
# cargo-fuzz passes are allowed with RUSTC_BOOTSTRAP=1; FUZZ_TOOLCHAIN=nightly uses a
# nightly toolchain instead. No sanitizer by default (the code forbids `unsafe`); set
# FUZZ_SANITIZER=address to add AddressSanitizer.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 2
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    toolchain=("+${FUZZ_TOOLCHAIN}")
else
    export RUSTC_BOOTSTRAP=1
fi
# The fuzz crate is its own workspace with its own target directory.
unset CARGO_TARGET_DIR
sanitizer="${FUZZ_SANITIZER:-none}"
# More than one job runs libFuzzer's fork mode, which logs to fuzz-<n>.log.
parallel=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
    parallel=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi

targets=$(cargo "${toolchain[@]}" fuzz list)
for t in $targets; do
    echo "== building $t"
    cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer" "$t"
done
for t in $targets; do
    echo "== fuzzing $t for ${secs}s"
    mkdir -p "corpus/$t"
    # corpus/<t> collects new inputs (not committed); seeds/<t> is the committed start.
    cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -dict=xmpp.dict -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${parallel[@]}"
done
echo "== all fuzz targets ran ${secs}s without a crash"
