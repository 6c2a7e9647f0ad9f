#!/usr/bin/env bash
# dm-verity hash tree: `rootfs verity` against `veritysetup format` on the same
# data, same salt, in the same run (interleaved A B A B ...). See bench/README.md.
#
#   bench/verity.sh [--runs N] [--size MIB] [--work DIR] [--rootfs BIN] [--out FILE]
#
# Needs veritysetup (cryptsetup-bin), jq and GNU time (/usr/bin/time). No root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

runs=3
size_mib=1024
work=${BENCH_WORK:-/var/tmp/rootfs-bench}
rootfs_bin=${ROOTFS:-}
out=""

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --size) size_mib=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --rootfs) rootfs_bin=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "bench: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
case $runs in ''|*[!0-9]*|0) echo "bench: --runs needs a positive number, not '$runs'" >&2; exit 2 ;; esac
case $size_mib in ''|*[!0-9]*|0) echo "bench: --size needs a positive number of MiB, not '$size_mib'" >&2; exit 2 ;; esac
for tool in veritysetup jq /usr/bin/time cmp; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (see scripts/packages.txt)" >&2; exit 2; }
done

if [ -z "$rootfs_bin" ]; then
    echo "bench: building rootfs (release)" >&2
    (cd "$repo" && swift build -c release --scratch-path .build-bench >&2)
    rootfs_bin=$(cd "$repo" && swift build -c release --scratch-path .build-bench --show-bin-path)/rootfs
fi
[ -x "$rootfs_bin" ] || { echo "bench: $rootfs_bin is not executable" >&2; exit 2; }

mkdir -p "$work"
work=$(cd "$work" && pwd)
[ -n "$out" ] || out=$here/results/verity-$(date -u +%Y-%m-%dT%H%M%SZ).json
mkdir -p "$(dirname "$out")"
data=$work/verity-$size_mib.data
salt=5eed00112233445566778899aabbccddeeff00112233445566778899aabbccdd

# Random data (kept and reused): nothing about it is easier to hash than a real image.
if [ ! -f "$data" ] || [ "$(stat -c %s "$data")" -ne $((size_mib << 20)) ]; then
    echo "bench: writing $size_mib MiB of random data to $data" >&2
    head -c $((size_mib << 20)) /dev/urandom > "$data.tmp" && mv "$data.tmp" "$data"
fi
cat "$data" > /dev/null   # in the page cache for both contenders alike

raw=$work/verity-runs.jsonl
: > "$raw"
# measure NAME RUN HASHFILE CMD...: wall time, user+sys time and peak RSS (/usr/bin/time -v).
measure() {
    local name=$1 run=$2 hash=$3; shift 3
    rm -f "$hash"
    sync
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -v -o "$work/verity-time.out" "$@" > "$work/verity-cmd.out" 2>&1 || { cat "$work/verity-cmd.out" >&2; exit 1; }
    t1=$(date +%s%N)
    local rss user sys
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/verity-time.out")
    user=$(awk -F': ' '/User time/ {print $2}' "$work/verity-time.out")
    sys=$(awk -F': ' '/System time/ {print $2}' "$work/verity-time.out")
    jq -nc --arg name "$name" --argjson run "$run" --argjson ns $((t1 - t0)) --argjson rss "$rss" \
        --argjson user "$user" --argjson sys "$sys" \
        '{name: $name, run: $run, seconds: ($ns / 1e9), cpu: ($user + $sys), rss_kb: $rss}' >> "$raw"
}

for run in $(seq 1 "$runs"); do
    echo "bench: run $run/$runs" >&2
    measure veritysetup "$run" "$work/verity-theirs.hash" veritysetup format --no-superblock --hash=sha256 \
        --data-block-size=4096 --hash-block-size=4096 --salt="$salt" "$data" "$work/verity-theirs.hash"
    theirs=$(awk '/^Root hash:/ {print $3}' "$work/verity-cmd.out")
    measure rootfs "$run" "$work/verity-ours.hash" "$rootfs_bin" verity -q "$data" -o "$work/verity-ours.hash" --salt "$salt"
    ours=$(tr -d '[:space:]' < "$work/verity-cmd.out")
    [ "$ours" = "$theirs" ] || { echo "bench: root hashes differ: ours $ours, veritysetup $theirs" >&2; exit 1; }
    cmp -s "$work/verity-ours.hash" "$work/verity-theirs.hash" || { echo "bench: the hash trees differ" >&2; exit 1; }
done

jq -s --argjson mib "$size_mib" --arg bin "$rootfs_bin" --arg cpus "$(nproc)" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  (group_by(.name) | map({key: .[0].name, value: {
      median_s: (map(.seconds) | median), min_s: (map(.seconds) | min), cpu_s: (map(.cpu) | median),
      peak_rss_mb: ((map(.rss_kb) | max) / 1024), mib_per_s: ($mib / (map(.seconds) | median))}}) | from_entries) as $f
  | {data_mib: $mib, cpus: $cpus, rootfs: $bin, figures: $f,
     ratio_wall: ($f.rootfs.median_s / $f.veritysetup.median_s), runs: .}' "$raw" > "$out"

jq -r '"data: \(.data_mib) MiB, \(.cpus) CPUs; same root hash and tree every run",
       (.figures | to_entries[] | "\(.key): median \(.value.median_s | . * 100 | round / 100) s (min \(.value.min_s | . * 100 | round / 100) s), cpu \(.value.cpu_s | . * 100 | round / 100) s, \(.value.mib_per_s | round) MiB/s, peak RSS \(.value.peak_rss_mb | round) MB"),
       "ours / veritysetup (wall, median): \(.ratio_wall | . * 100 | round / 100)"' "$out"
echo "bench: results in $out" >&2
