#!/usr/bin/env bash
# rootfs benchmark: our writers and build against Kata's osbuilder methods and
# the machine's floor, on one machine in one run. See bench/README.md.
#
#   bench/run.sh [--runs N] [--quick] [--work DIR] [--rootfs BIN] [--kernel FILE]
#                [--sections initrd,image,build,scale,boot,cache,memory] [--out FILE] [--append]
#                [--extra-pkg PKG]
#
# Needs root (Kata's disk method mounts loop devices; mmdebstrap), network
# (mmdebstrap), and: jq parted qemu-utils qemu-system-x86 cpio zstd gzip pigz e2fsprogs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

runs=5
quick=no
work=${BENCH_WORK:-/var/tmp/rootfs-bench}
rootfs_bin=${ROOTFS:-}
kernel=${KERNEL:-}
sections=initrd,image,build,scale,boot,cache,memory
extra_pkg=${BENCH_EXTRA_PKG:-htop}
out=""
runs_given=no
append=no

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; runs_given=yes; shift 2 ;;
        --quick) quick=yes; shift ;;
        --work) work=$2; shift 2 ;;
        --rootfs) rootfs_bin=$2; shift 2 ;;
        --kernel) kernel=$2; shift 2 ;;
        --sections) sections=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --append) append=yes; shift ;;
        --extra-pkg) extra_pkg=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "bench: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
case $runs in ''|*[!0-9]*|0) echo "bench: --runs needs a positive number, not '$runs'" >&2; exit 2 ;; esac
[ "$quick" = yes ] && [ "$runs_given" = no ] && runs=2
has() { case ",$sections," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (Kata's disk method needs loop devices and mount)" >&2; exit 2; }
for tool in jq cpio zstd gzip pigz tar mke2fs parted qemu-img losetup partprobe mmdebstrap /usr/bin/time; do
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
raw=$work/raw.jsonl
[ "$append" = yes ] || : > "$raw"
date_tag=$(date -u +%Y-%m-%dT%H%M%SZ)
[ -n "$out" ] || out=$here/results/$date_tag.json
mkdir -p "$(dirname "$out")"
notes=()
note() { notes+=("$1"); echo "bench: note: $1" >&2; }
say() { echo "bench: $*" >&2; }

# measure SECTION NAME RUN OUTPUT|- CMD...: wall time (ns clock), peak RSS of
# the largest process (/usr/bin/time %M) and, when OUTPUT is a file, its size.
measure() {
    local section=$1 name=$2 run=$3 output=$4; shift 4
    local t0 t1 rss bytes=null
    # Every contender starts without its previous output: freeing a few hundred MB of
    # an old file is not what is measured (it cost our image writer 0.1-0.3 s of 0.4 s).
    [ "$output" = - ] || rm -f "$output"
    sync
    t0=$(date +%s%N)
    if ! /usr/bin/time -f %M -o "$work/time.out" "$@" >"$work/cmd.log" 2>&1; then
        echo "bench: $section/$name failed: $*" >&2
        tail -n 20 "$work/cmd.log" >&2
        exit 1
    fi
    t1=$(date +%s%N)
    rss=$(tail -n 1 "$work/time.out")
    [ "$output" = - ] || bytes=$(stat -c %s "$output")
    jq -nc --arg s "$section" --arg n "$name" --argjson r "$run" --argjson ns "$((t1 - t0))" \
        --argjson b "$bytes" --argjson m "$rss" \
        '{section: $s, name: $n, run: $r, seconds: ($ns / 1e9), bytes: $b, rss_kb: $m}' >> "$raw"
    printf 'bench: %-7s %-22s run %d: %7.2f s  %s\n' "$section" "$name" "$run" \
        "$(echo "$t1 $t0" | awk '{print ($1 - $2) / 1e9}')" "$([ "$bytes" = null ] || echo "$bytes bytes")" >&2
}

# record SECTION NAME RUN SECONDS: a figure measured some other way (boot).
record() {
    jq -nc --arg s "$1" --arg n "$2" --argjson r "$3" --argjson sec "$4" \
        '{section: $s, name: $n, run: $r, seconds: $sec, bytes: null, rss_kb: null}' >> "$raw"
    printf 'bench: %-7s %-22s run %d: %7.2f s\n' "$1" "$2" "$3" "$4" >&2
}

warm() { tar -cf - -C "$1" . > /dev/null; }   # the tree in the page cache, for every contender alike

# Kata's initrd_builder.sh pipeline, and the floor: read every byte, archive and
# compress with all cores, write nothing. Run as `bash -c SCRIPT _ ARGS`.
kata_initrd_sh='cd "$1" && find . | cpio --quiet -H newc -o | gzip -9 > "$2"'
floor_sh='tar -cf - -C "$1" . | zstd -q -T0 -3 > /dev/null'
floor_size() { tar -cf - -C "$1" . | zstd -q -T0 -3 | wc -c; }
# The gzip baselines of the parallel gzip initrd: pigz on all cores (its default level 6),
# and one-core gzip -6 on Kata's cpio stream, whose size ours must not exceed.
pigz_sh='tar -cf - -C "$1" . | pigz -6 > "$2"'
gzip6_sh='cd "$1" && find . | cpio --quiet -H newc -o | gzip -6 > "$2"'

# The same mmdebstrap call the debian hook makes (distros/debian/rootfs_lib.sh) with the
# default package set (systemd systemd-sysv on top of minbase): the difference is what
# rootfs adds (config, agent, checks, initrd, image; sections 3 and 6).
os_version=$(bash -c '. "$1/distros/debian/config.sh"; echo "$OS_VERSION"' _ "$repo")
mm_args=(--variant=minbase --aptopt='Acquire::Languages "none"'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*' --include=systemd,systemd-sysv "$os_version")

# ---------------------------------------------------------------- the tree
debian=$work/debian
build_log=$work/build.log
if [ ! -x "$debian/sbin/init" ] && [ ! -L "$debian/sbin/init" ]; then
    say "building the Debian rootfs once (rootfs build debian -r $debian)"
    rm -rf "$debian"
    "$rootfs_bin" build debian -r "$debian" > "$build_log" 2>&1 || { tail -n 30 "$build_log" >&2; exit 1; }
    tar -C "$debian" -cf "$work/debian.tar" .
else
    say "reusing the Debian rootfs in $debian (remove it to rebuild)"
fi
tree_bytes=$(du -sb "$debian" | cut -f1)
tree_files=$(find "$debian" | wc -l)
say "tree: $tree_bytes bytes, $tree_files entries"

# ---------------------------------------------------------------- 1. initrd
if has initrd; then
    say "1. initrd: rootfs initrd (zstd, parallel gzip) vs Kata's find|cpio|gzip -9, tar|pigz, cpio|gzip -6 and the tar|zstd floor"
    warm "$debian"
    for r in $(seq 1 "$runs"); do
        measure initrd ours-zstd "$r" "$work/ours.zst.initrd" "$rootfs_bin" initrd -q "$debian" -o "$work/ours.zst.initrd"
        measure initrd kata-gzip9 "$r" "$work/kata.initrd" bash -c "$kata_initrd_sh" _ "$debian" "$work/kata.initrd"
        measure initrd ours-gzip "$r" "$work/ours.gz.initrd" "$rootfs_bin" initrd -q --compression gzip "$debian" -o "$work/ours.gz.initrd"
        measure initrd floor-tar-zstd "$r" - bash -c "$floor_sh" _ "$debian"
        measure initrd tar-pigz "$r" "$work/pigz.tar.gz" bash -c "$pigz_sh" _ "$debian" "$work/pigz.tar.gz"
        measure initrd cpio-gzip6 "$r" "$work/gzip6.initrd" bash -c "$gzip6_sh" _ "$debian" "$work/gzip6.initrd"
    done
    gzip -t "$work/ours.gz.initrd" || { echo "bench: gzip -t rejects our gzip initrd" >&2; exit 1; }
    fs=$(floor_size "$debian")
    jq -nc --argjson b "$fs" '{section: "initrd", name: "floor-tar-zstd", run: 0, seconds: null, bytes: $b, rss_kb: null}' >> "$raw"
fi

# ---------------------------------------------------------------- 2. disk image
if has image; then
    say "2. disk image: rootfs image (no root) vs Kata's method (parted, losetup, mkfs.ext4, mount, cp -a)"
    kata_disk=yes
    if ! losetup -f >/dev/null 2>&1; then
        kata_disk=no
        note "no free loop device (losetup -f failed): Kata's disk method cannot run here; image measured for ours only"
    fi
    warm "$debian"
    for r in $(seq 1 "$runs"); do
        measure image ours "$r" "$work/ours.img" "$rootfs_bin" image -q "$debian" -o "$work/ours.img"
        if [ "$kata_disk" = yes ]; then
            measure image kata "$r" "$work/kata.img" "$here/kata-image.sh" "$debian" "$work/kata.img"
        fi
    done
    rm -f "$work/kata.img"
fi

# ---------------------------------------------------------------- 3. whole build
if has build; then
    build_runs=$runs
    say "3. whole build: rootfs build debian (rootfs + initrd + image) vs bare mmdebstrap, interleaved, $build_runs each"
    for r in $(seq 1 "$build_runs"); do
        rm -rf "$work/b-ours" "$work/b-mm"; mkdir -p "$work/b-ours"
        measure build ours "$r" - "$rootfs_bin" build debian -q -r "$work/b-ours/rootfs" \
            --initrd "$work/b-ours/debian.initrd" --image "$work/b-ours/debian.img"
        rm -rf "$work/b-ours"
        measure build mmdebstrap "$r" - mmdebstrap -q "${mm_args[@]}" "$work/b-mm"
        rm -rf "$work/b-mm"
    done
fi

# ---------------------------------------------------------------- 4. scale
if has scale; then
    say "4. scale: the writers on 100 MB, 1 GB and 100k-small-file trees"
    scale_trees=(t100m t100k)
    [ "$quick" = yes ] || scale_trees=(t100m t1g t100k)
    for t in "${scale_trees[@]}"; do
        dir=$work/scale/$t
        if [ ! -e "$dir/.ready" ]; then
            rm -rf "$dir"; mkdir -p "$dir"
            case $t in
                t100m)  # the Debian tree as it is
                    cp -a "$debian/." "$dir/" ;;
                t1g)    # the Debian tree + 450 MiB random (incompressible) + 450 MiB base64 text (compressible)
                    cp -a "$debian/." "$dir/"; mkdir -p "$dir/srv/bench"
                    for i in 1 2 3; do
                        head -c $((150 << 20)) /dev/urandom > "$dir/srv/bench/random$i.bin"
                        head -c $((112 << 20)) /dev/urandom | base64 -w 76 > "$dir/srv/bench/text$i.txt"
                    done ;;
                t100k)  # the Debian tree + 100,000 files of 300 bytes in 100 directories
                    cp -a "$debian/." "$dir/"
                    head -c $((100000 * 225)) /dev/urandom | base64 -w 0 > "$work/small.src"
                    for d in $(seq -w 0 99); do
                        mkdir -p "$dir/srv/small/$d"
                        dd if="$work/small.src" bs=300000 skip=$((10#$d)) count=1 status=none \
                            | split -b 300 -a 3 -d - "$dir/srv/small/$d/f"
                    done
                    rm -f "$work/small.src" ;;
            esac
            touch "$dir/.ready"
        fi
        jq -nc --arg n "$t" --argjson b "$(du -sb "$dir" | cut -f1)" --argjson f "$(find "$dir" | wc -l)" \
            '{section: "tree", name: $n, run: 0, seconds: null, bytes: $b, rss_kb: null, entries: $f}' >> "$raw"
        warm "$dir"
        for r in $(seq 1 "$runs"); do
            measure "scale" "$t/initrd" "$r" "$work/scale.initrd" "$rootfs_bin" initrd -q "$dir" -o "$work/scale.initrd"
            measure "scale" "$t/floor" "$r" - bash -c "$floor_sh" _ "$dir"
            measure "scale" "$t/image" "$r" "$work/scale.img" "$rootfs_bin" image -q "$dir" -o "$work/scale.img"
        done
        rm -f "$work/scale.initrd" "$work/scale.img"
    done
fi

# ---------------------------------------------------------------- 5. boot
if has boot; then
    if [ -z "$kernel" ]; then
        kernel=$("$repo/scripts/fetch-test-kernel.sh" "$repo/.build-kernel" 2>"$work/kernel.log" || true)
    fi
    if [ -z "$kernel" ] || [ ! -r "$kernel" ]; then
        note "no kernel (scripts/fetch-test-kernel.sh failed, see $work/kernel.log): boot not measured"
    else
        say "5. boot: QEMU start to the agent's ready line, zstd vs gzip initrd of the same tree (TCG)"
        [ -f "$work/ours.zst.initrd" ] || "$rootfs_bin" initrd -q "$debian" -o "$work/ours.zst.initrd"
        [ -f "$work/ours.gz.initrd" ] || "$rootfs_bin" initrd -q --compression gzip "$debian" -o "$work/ours.gz.initrd"
        for r in $(seq 1 "$runs"); do
            for c in zst gz; do
                if ! "$rootfs_bin" boot "$work/ours.$c.initrd" --kernel "$kernel" --accel tcg --memory 1024 \
                        -- true > /dev/null 2> "$work/boot.log"; then
                    echo "bench: boot of the $c initrd failed:" >&2; tail -n 20 "$work/boot.log" >&2; exit 1
                fi
                s=$(sed -n 's/.*ready in \([0-9.]*\) s.*/\1/p' "$work/boot.log" | head -n 1)
                [ -n "$s" ] || { echo "bench: no 'ready in N s' line from rootfs boot:" >&2; cat "$work/boot.log" >&2; exit 1; }
                record boot "initrd-$c" "$r" "$s"
            done
        done
    fi
fi

# ---------------------------------------------------------------- 6. cache
if has cache; then
    say "6. cache: rootfs build debian cold (empty cache) vs warm (tree cache hit) vs bare mmdebstrap;"
    say "   + --extra-pkg $extra_pkg on the warm cache (incremental where the distro has extend_rootfs) vs cold with it"
    cbuild=("$rootfs_bin" build -q debian --format tar --no-manifest)
    # The warm cache holds the base configuration only (built once, outside the timings);
    # every extra-package run starts from a copy of it, so it never hits a tree of base + extra.
    rm -rf "$work/cache-warm"
    "${cbuild[@]}" -O "$work/c-out" --cache-dir "$work/cache-warm" > "$work/cmd.log" 2>&1 \
        || { echo "bench: the warm cache's first build failed" >&2; tail -n 20 "$work/cmd.log" >&2; exit 1; }
    for r in $(seq 1 "$runs"); do
        rm -rf "$work/cache-cold" "$work/c-out"
        measure cache cold "$r" - "${cbuild[@]}" -O "$work/c-out" --cache-dir "$work/cache-cold"
        measure cache warm "$r" - "${cbuild[@]}" -O "$work/c-out" --cache-dir "$work/cache-warm"
        rm -rf "$work/c-mm"
        measure cache mmdebstrap "$r" - mmdebstrap -q "${mm_args[@]}" "$work/c-mm"
        rm -rf "$work/c-mm" "$work/cache-cold"
        measure cache extra-cold "$r" - "${cbuild[@]}" --extra-pkg "$extra_pkg" -O "$work/c-out" --cache-dir "$work/cache-cold"
        rm -rf "$work/cache-extra"; cp -a "$work/cache-warm" "$work/cache-extra"
        measure cache extra-warm "$r" - "${cbuild[@]}" --extra-pkg "$extra_pkg" -O "$work/c-out" --cache-dir "$work/cache-extra"
    done
    rm -rf "$work/cache-cold" "$work/cache-extra" "$work/c-out"
fi

# ---------------------------------------------------------------- 7. memory
if has memory; then
    say "7. memory: peak RSS of every writer on the Debian tree (rootfs image --format F, one run each)"
    [ -n "$kernel" ] || kernel=$("$repo/scripts/fetch-test-kernel.sh" "$repo/.build-kernel" 2>"$work/kernel.log" || true)
    warm "$debian"
    formats=(tar tar.gz tar.zst initrd initrd-gzip raw qcow2 vhd vhdx dynamic-vhd vmdk erofs squashfs oci docker-archive containerdisk)
    [ -n "$kernel" ] && [ -r "$kernel" ] && formats+=(kernel+initrd iso-bios uki iso-efi raw-efi)
    mkdir -p "$work/mem"
    for f in "${formats[@]}"; do
        rm -rf "$work/mem/out"*
        case $f in
            initrd-gzip) args=(--format initrd --compression gzip) ;;
            kernel+initrd|iso-bios|uki|iso-efi|raw-efi) args=(--format "$f" --kernel "$kernel") ;;
            *) args=(--format "$f") ;;
        esac
        measure memory "$f" 1 - "$rootfs_bin" image -q "${args[@]}" "$debian" -o "$work/mem/out"
    done
    rm -rf "$work/mem"
fi

# ---------------------------------------------------------------- report
# Ratios: ours / baseline of the median wall times (and sizes); each with its target.
ratios='[
  ["initrd: time, ours zstd / Kata",         "initrd", "ours-zstd", "kata-gzip9",     "seconds", 0.2,  "at least 5x faster"],
  ["initrd: size, ours zstd / Kata",         "initrd", "ours-zstd", "kata-gzip9",     "bytes",   1.0,  "no larger"],
  ["initrd: time, ours gzip / Kata",         "initrd", "ours-gzip", "kata-gzip9",     "seconds", 0.1,  "at least 10x faster"],
  ["initrd: time, ours gzip / tar|pigz",     "initrd", "ours-gzip", "tar-pigz",       "seconds", 1.5,  "within 1.5x"],
  ["initrd: size, ours gzip / cpio|gzip -6", "initrd", "ours-gzip", "cpio-gzip6",     "bytes",   1.0,  "no larger"],
  ["initrd: size, ours gzip / Kata",         "initrd", "ours-gzip", "kata-gzip9",     "bytes",   1.0,  "no larger"],
  ["initrd: time, ours zstd / floor",        "initrd", "ours-zstd", "floor-tar-zstd", "seconds", 1.5,  "within 1.5x"],
  ["initrd: size, ours zstd / floor",        "initrd", "ours-zstd", "floor-tar-zstd", "bytes",   null, ""],
  ["image: time, ours / Kata",               "image",  "ours",      "kata",           "seconds", 0.2,  "at least 5x faster"],
  ["build: time, rootfs build / mmdebstrap", "build",  "ours",      "mmdebstrap",     "seconds", 1.2,  "overhead under 20%"],
  ["scale 100MB: initrd / floor",            "scale",  "t100m/initrd", "t100m/floor", "seconds", 1.5,  "within 1.5x"],
  ["scale 1GB: initrd / floor",              "scale",  "t1g/initrd",   "t1g/floor",   "seconds", 1.5,  "within 1.5x"],
  ["scale 100k files: initrd / floor",       "scale",  "t100k/initrd", "t100k/floor", "seconds", 1.5,  "within 1.5x"],
  ["boot: ready, zstd / gzip initrd",        "boot",   "initrd-zst",   "initrd-gz",   "seconds", null, ""],
  ["cache: warm / cold rebuild",             "cache",  "warm",         "cold",        "seconds", 0.1,  "at least 10x faster"],
  ["cache: +1 package warm / cold with it",   "cache",  "extra-warm",   "extra-cold",  "seconds", 0.334, "at least 3x faster"],
  ["cache: cold build / bare mmdebstrap",     "cache",  "cold",         "mmdebstrap",  "seconds", 1.05, "within 1.05x"]
]'
notes_json=$(printf '%s\n' "${notes[@]+"${notes[@]}"}" | jq -R . | jq -sc 'map(select(length > 0))')
jq -s --argjson ratios "$ratios" --argjson runs "$runs" --arg date "$date_tag" --arg host "$(uname -srm)" \
   --argjson cpus "$(nproc)" --argjson quick "$([ "$quick" = yes ] && echo true || echo false)" \
   --argjson tree_bytes "$tree_bytes" --argjson tree_files "$tree_files" --argjson notes "$notes_json" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  (map(select(.section != "tree")) | group_by([.section, .name]) | map({
      section: .[0].section, name: .[0].name,
      runs: (map(select(.seconds != null)) | length),
      seconds_min: (map(.seconds | select(. != null)) | min),
      seconds_median: (map(.seconds | select(. != null)) | median),
      bytes: (map(.bytes | select(. != null)) | median),
      rss_kb_max: (map(.rss_kb | select(. != null)) | max)
  })) as $figures
  | def fig($s; $n): $figures | map(select(.section == $s and .name == $n)) | .[0];
  {
    date: $date, host: $host, cpus: $cpus, runs: $runs, quick: $quick,
    tree: {bytes: $tree_bytes, entries: $tree_files},
    scale_trees: map(select(.section == "tree") | {name, bytes, entries}),
    figures: $figures,
    ratios: [ $ratios[] as [$lbl, $s, $a, $b, $metric, $target, $goal]
      | (fig($s; $a)) as $x | (fig($s; $b)) as $y
      | select($x != null and $y != null)
      | (if $metric == "seconds" then [$x.seconds_median, $y.seconds_median] else [$x.bytes, $y.bytes] end) as [$p, $q]
      | select($p != null and $q != null and $q > 0)
      | {label: $lbl, ours: $p, baseline: $q, metric: $metric, ratio: ($p / $q),
         target: $target, goal: $goal, met: (if $target == null then null else ($p / $q) <= $target end)} ],
    memory: [ $figures[] | select(.section != "build" and .rss_kb_max != null and (.section == "memory" or (.name | test("^ours|/initrd$|/image$"))))
      | {name: (.section + " " + .name), rss_mb: (.rss_kb_max / 1024), met: (.rss_kb_max < 102400)} ],
    notes: $notes
  }' "$raw" > "$out"

# The table.
{
    echo
    echo "figures (median of $runs runs; min in brackets; peak RSS of the largest process)"
    jq -r '.figures[] | [.section, .name,
        (if .seconds_median == null then "-" else "\(.seconds_median * 100 | round / 100) s [\(.seconds_min * 100 | round / 100)]" end),
        (if .bytes == null then "-" else "\(.bytes / 1048576 * 10 | round / 10) MiB" end),
        (if .rss_kb_max == null then "-" else "\(.rss_kb_max / 1024 | round) MB RSS" end)] | @tsv' "$out" \
        | column -t -s $'\t'
    echo
    echo "ratios (ours / baseline of the medians; in brackets: speed-up)"
    jq -r '.ratios[] | [.label, "\(.ratio * 1000 | round / 1000)",
        (if .metric == "seconds" and .ratio > 0 then "(\(1 / .ratio * 10 | round / 10)x)" else "" end),
        .goal, (if .met == null then "" elif .met then "ok" else "MISSED" end)] | @tsv' "$out" | column -t -s $'\t'
    echo
    echo "writer peak memory (target < 100 MB)"
    jq -r '.memory[] | [.name, "\(.rss_mb | round) MB", (if .met then "ok" else "MISSED" end)] | @tsv' "$out" | column -t -s $'\t'
    jq -r '.notes[] | "note: " + .' "$out"
    echo
    echo "results: $out"
}
