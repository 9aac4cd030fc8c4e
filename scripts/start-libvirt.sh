#!/usr/bin/env bash
# Start libvirtd with its LXC driver on this machine, for the libvirt deployer
# (`divisor-controller --deploy libvirt`) and its tests. Idempotent: a running daemon is
# left alone. Needs root; the packages come from scripts/install-deps.sh.
#
# Two things this machine needs that a stock systemd host does not:
#
# 1. The users, groups and folders libvirtd expects (its Debian package makes them when
#    systemd and the maintainer scripts run; here nothing did).
# 2. A cgroup fix. On a hybrid layout whose cgroup2 mount (`/sys/fs/cgroup/unified`)
#    still lists a controller (here `hugetlb`, the one not mounted as v1), libvirt 9.0
#    takes cgroup v2 as available and, while setting up an LXC container, bind-mounts
#    the v2 hierarchy before the v1 tmpfs exists:
#      libvirt_lxc startup: Unable to create directory /sys/fs/cgroup/unified
#    Mounting each such controller as a v1 hierarchy empties that list, so libvirt uses
#    v1 only, and containers start. If that mount is refused, libvirtd runs instead in a
#    mount namespace of its own without the cgroup2 mount (the host is untouched).
set -euo pipefail

URI=lxc:///system
log() { echo "start-libvirt: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "needs root"
  exit 1
fi
command -v libvirtd >/dev/null || { log "libvirtd is not installed: run scripts/install-deps.sh"; exit 1; }

getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
getent group libvirt >/dev/null || groupadd -r libvirt
getent group kvm >/dev/null || groupadd -r kvm
# libvirtd -d exits at once when its log folder is missing.
mkdir -p /var/log/libvirt/lxc /var/log/libvirt/qemu /var/lib/libvirt /run/libvirt

# Bind every controller cgroup2 still lists to a v1 hierarchy; true when none is left.
v1_only() {
  local list=/sys/fs/cgroup/unified/cgroup.controllers c
  [[ -r $list ]] || return 0
  for c in $(cat "$list"); do
    mountpoint -q "/sys/fs/cgroup/$c" && continue
    log "mounting cgroup controller $c as a v1 hierarchy at /sys/fs/cgroup/$c"
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || { rmdir "/sys/fs/cgroup/$c" 2>/dev/null; return 1; }
  done
  [[ -z $(tr -d ' \n' <"$list") ]]
}

running() {
  local pid
  pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == libvirtd ]]
}

if running; then
  log "libvirtd already running (pid $(cat /run/libvirtd.pid))"
else
  rm -f /run/libvirtd.pid
  if v1_only; then
    log "starting libvirtd"
    libvirtd -d
  else
    log "cgroup fix refused: starting libvirtd in its own mount namespace without cgroup2"
    unshare -m --propagation slave sh -c \
      'if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; exec libvirtd -d'
  fi
fi

for _ in $(seq 100); do
  if virsh -c "$URI" list >/dev/null 2>&1; then
    log "ready: virsh -c $URI list works"
    exit 0
  fi
  sleep 0.1
done
log "libvirtd did not become ready; see /var/log/libvirt/libvirtd.log"
exit 1
