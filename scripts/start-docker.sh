#!/usr/bin/env bash
# Starts dockerd in the background when no engine answers (machines without
# systemd-managed services, CI). Flags: see docs/CONTAINERS.md.
set -euo pipefail
command -v dockerd >/dev/null || { echo "dockerd is not installed" >&2; exit 1; }
if docker info >/dev/null 2>&1; then exit 0; fi
nohup dockerd --iptables=false --bridge=none >/var/log/rootfs-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "dockerd did not start; see /var/log/rootfs-dockerd.log" >&2
tail -n 20 /var/log/rootfs-dockerd.log >&2 || true
exit 1
