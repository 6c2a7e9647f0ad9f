#!/usr/bin/env bash
# Fuzzes the parsers that read strangers' bytes (docs/FUZZING.md) with
# libFuzzer and AddressSanitizer, each harness for a fixed number of runs
# from a fixed seed, so a run here and a run in CI do the same work.
#
#   scripts/fuzz.sh [--runs N] [--max-seconds S] [HARNESS...]   (default: every harness)
#
# A crash fails the run; its input is copied to Fuzz/crashes/HARNESS/ so that
# FuzzCorpusTests replays it from then on (commit it with the fix).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=100000
max_seconds=150
harnesses=()
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --max-seconds) max_seconds=$2; shift 2 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) harnesses+=("$1"); shift ;;
    esac
done
[ ${#harnesses[@]} -gt 0 ] || harnesses=(tree probe status)

swift build --build-path .build-fuzz --product rootfs-fuzz --sanitize=fuzzer --sanitize=address -Xswiftc -DFUZZING
binary=$(swift build --build-path .build-fuzz --product rootfs-fuzz --sanitize=fuzzer --sanitize=address -Xswiftc -DFUZZING --show-bin-path)/rootfs-fuzz

status=0
for harness in "${harnesses[@]}"; do
    work=$(mktemp -d /tmp/rootfs-fuzz-XXXXXX)
    # New inputs go to a scratch corpus, never into the repository's.
    cp -a "Fuzz/corpus/$harness/." "$work/corpus/" 2>/dev/null || { mkdir -p "$work/corpus"; cp -a "Fuzz/corpus/$harness/." "$work/corpus/"; }
    echo "==> fuzz $harness: $runs runs from seed 1 (at most $max_seconds s)"
    set +e
    ROOTFS_FUZZ_TARGET=$harness SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 \
        "$binary" -seed=1 -runs="$runs" -max_total_time="$max_seconds" -rss_limit_mb=1024 -malloc_limit_mb=8192 -timeout=10 \
        -max_len=262144 -artifact_prefix="$work/" -print_final_stats=1 "$work/corpus" Fuzz/crashes/"$harness" \
        > "$work/log" 2>&1
    rc=$?
    set -e
    grep -E '^(#[0-9]+ +(DONE|INITED)|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/log" || true
    if [ $rc -ne 0 ]; then
        status=1
        echo "fuzz $harness: failed (exit $rc); the input that broke it:" >&2
        tail -n 40 "$work/log" >&2
        for artifact in "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-*; do
            [ -e "$artifact" ] || continue
            cp "$artifact" "Fuzz/crashes/$harness/"
            echo "saved as Fuzz/crashes/$harness/$(basename "$artifact")" >&2
        done
    else
        echo "fuzz $harness: no crash"
    fi
    rm -rf "$work"
done
exit $status
