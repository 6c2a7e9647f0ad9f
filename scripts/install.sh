#!/usr/bin/env bash
# Installs rootfs into PREFIX in the layout it searches by itself (docs/CLI.md, "Installing"):
#
#   PREFIX/bin/rootfs
#   PREFIX/libexec/rootfs/rootfs-agent[-ARCH]        the reference agents (static guest binaries)
#   PREFIX/share/rootfs/{distros,template,commit}    the built-in distros, `rootfs new`'s template,
#                                                    the commit the binary was built from
#   PREFIX/share/man/man1/rootfs*.1
#   PREFIX/share/bash-completion/completions/rootfs
#   PREFIX/share/zsh/site-functions/_rootfs
#   PREFIX/share/fish/vendor_completions.d/rootfs.fish
#
# usage: scripts/install.sh [--products DIR] PREFIX
#   --products DIR   install the rootfs and rootfs-agent already built in DIR (e.g. .build/debug)
#                    instead of running `swift build -c release`.
# DESTDIR is honoured as packagers expect: files go to $DESTDIR$PREFIX.
set -euo pipefail

usage() { echo "usage: $0 [--products DIR] PREFIX" >&2; exit 2; }
products=""
while [ $# -gt 0 ]; do
    case "$1" in
        --products) [ $# -ge 2 ] || usage; products=$2; shift 2 ;;
        --products=*) products=${1#--products=}; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || usage
prefix=$1
case "$prefix" in /*) ;; *) prefix="$(pwd)/$prefix" ;; esac
root="${DESTDIR:-}$prefix"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

manual_plugin=no
if [ -z "$products" ]; then
    (cd "$here" && swift build -c release --product rootfs && swift build -c release --product rootfs-agent)
    products="$(cd "$here" && swift build -c release --show-bin-path)"
    manual_plugin=yes
fi
for f in rootfs rootfs-agent; do
    [ -x "$products/$f" ] || { echo "install.sh: $products/$f is missing: build it first (swift build)" >&2; exit 1; }
done

install -d "$root/bin" "$root/libexec/rootfs" "$root/share/rootfs" "$root/share/man/man1" \
    "$root/share/bash-completion/completions" "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d"
install -m 0755 "$products/rootfs" "$root/bin/rootfs"
install -m 0755 "$products/rootfs-agent" "$root/libexec/rootfs/rootfs-agent"
# Agents for other architectures, from scripts/build-agent.sh, when they were built.
for agent in "$products"/rootfs-agent-*; do
    [ -f "$agent" ] && install -m 0755 "$agent" "$root/libexec/rootfs/"
done

# The data, replaced as a whole so a distro removed upstream does not linger.
for dir in distros template; do
    rm -rf "$root/share/rootfs/$dir.new"
    cp -R "$here/$dir" "$root/share/rootfs/$dir.new"
    rm -rf "$root/share/rootfs/$dir"
    mv "$root/share/rootfs/$dir.new" "$root/share/rootfs/$dir"
done

# The commit, which an installed copy cannot ask git for (manifests and --version record it).
commit=unknown
if git -C "$here" rev-parse --short=12 HEAD >/dev/null 2>&1; then
    commit=$(git -C "$here" rev-parse --short=12 HEAD)
    [ -z "$(git -C "$here" status --porcelain --untracked-files=no)" ] || commit="$commit+dirty"
fi
printf '%s\n' "$commit" > "$root/share/rootfs/commit"

bin="$root/bin/rootfs"
"$bin" --generate-completion-script bash > "$root/share/bash-completion/completions/rootfs"
"$bin" --generate-completion-script zsh > "$root/share/zsh/site-functions/_rootfs"
"$bin" --generate-completion-script fish > "$root/share/fish/vendor_completions.d/rootfs.fish"

# Man pages: swift-argument-parser's generate-manual plugin after a release build of our own;
# with --products (no build here), a page per subcommand made from its --help text.
man="$root/share/man/man1"
rm -f "$man"/rootfs*.1
pages="$here/.build/plugins/GenerateManual/outputs/rootfs"
if [ "$manual_plugin" = yes ] &&
   (cd "$here" && swift package generate-manual --configuration release --multi-page) >/dev/null 2>&1 &&
   ls "$pages"/*.1 >/dev/null 2>&1; then
    install -m 0644 "$pages"/*.1 "$man/"
else
    date=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%d 2>/dev/null || date -u +%Y-%m-%d)
    roff() {  # NAME TITLE < help text
        printf '.TH %s 1 %s "rootfs" "rootfs manual"\n.SH NAME\n%s\n.SH DESCRIPTION\n.nf\n' \
            "$(printf '%s' "$1" | tr '[:lower:]' '[:upper:]')" "$date" "$2"
        # Lines starting with . or ' are roff requests; backslashes are escapes.
        sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
        printf '.fi\n'
    }
    "$bin" --help | roff rootfs "rootfs \\- build minimal Linux guest root filesystems and boot images" > "$man/rootfs.1"
    for sub in $("$bin" --help | awk '/^SUBCOMMANDS:/{on=1; next} on && /^  [a-z]/{print $1} on && /^$/{exit}'); do
        "$bin" help "$sub" | roff "rootfs-$sub" "rootfs-$sub \\- rootfs $sub" > "$man/rootfs.$sub.1"
    done
fi

echo "installed rootfs ($commit) into $root"
