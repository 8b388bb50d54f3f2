#!/usr/bin/env bash
# Run a command in a copy of this project inside a Debian root of another release, with
# that release's RabbitMQ, Erlang and Python:
#
#     sudo tools/debian_root.sh trixie make test    # RabbitMQ 4.0 (Debian 13, stable)
#     sudo tools/debian_root.sh forky make test     # RabbitMQ 4.3 (Debian testing)
#
# The first run builds the root with debootstrap (a few minutes, about 1 GB of disk) in
# /var/cache/hello-rabbitmq/SUITE; later runs reuse it, and rebuild it when the suite or the
# package list changes. Each run copies the project's files (tracked and new, not .venv)
# to /hello in the root, mounts what the tests need, runs the command there, and removes
# the mounts on every exit. Needs root, debootstrap, and the package mirror this machine
# uses. pip in the root uses the machine's pip configuration and CA certificates.
set -euo pipefail

suite=${1:?usage: tools/debian_root.sh SUITE COMMAND...}
shift
[ $# -gt 0 ] || set -- make test
project=$(cd "$(dirname "$0")/.." && pwd)
root=${HELLO_ROOT_DIR:-/var/cache/hello-rabbitmq}/$suite
# What the tests need: the broker, Python with venv, make, and ip for the split tests.
packages="rabbitmq-server python3 python3-venv make iproute2 ca-certificates procps"
stamp="$suite: $packages"

[ "$(id -u)" -eq 0 ] || { echo "debian_root.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
command -v debootstrap >/dev/null || {
    echo "debian_root.sh: needs debootstrap (apt-get install debootstrap)" >&2
    exit 2
}

unmount_all() {
    # Deepest first; lazily, so that a mount a test left behind cannot keep the rest.
    local target
    for target in $(findmnt -rn -o TARGET | grep -E "^$root(/|$)" | sort -r); do
        umount -l "$target" 2>/dev/null || true
    done
}

mirror() {
    # The Debian mirror this machine's apt uses.
    local uri
    uri=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 |
        awk '{print $2}')
    [ -n "$uri" ] || uri=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | head -1 |
        awk '{print $2}')
    echo "${uri:-http://deb.debian.org/debian}"
}

in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

build() {
    echo "debian_root.sh: building a Debian $suite root in $root (a few minutes)" >&2
    unmount_all
    rm -rf --one-file-system "$root"
    mkdir -p "$root"
    # Debian 12's debootstrap has no script for the newer suites; sid's builds them.
    debootstrap --variant=minbase "$suite" "$root" "$(mirror)" \
        /usr/share/debootstrap/scripts/sid >"$root.debootstrap.log" 2>&1 || {
        tail -20 "$root.debootstrap.log" >&2
        exit 1
    }
    # A testing suite's Release file may be past its Valid-Until date on a mirror snapshot.
    echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99valid-until"
    # Install, but start no service: the tests start their own nodes.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount_all
    in_root apt-get update -qq
    # shellcheck disable=SC2086 # a list of package names
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $packages >/dev/null
    unmount_all
    echo "$stamp" >"$root/.hello-root"
}

mount_all() {
    # The root as a mount point of its own: `ip netns exec` remounts / as a slave.
    mount --bind "$root" "$root"
    mount --make-private "$root"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
}

copy_machine_config() {
    # pip reaches the same package index as on this machine, through the same CAs.
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
    if [ -d /etc/xdg/pip ]; then
        mkdir -p "$root/etc/xdg"
        rm -rf "$root/etc/xdg/pip"
        cp -r /etc/xdg/pip "$root/etc/xdg/pip"
    fi
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
        in_root update-ca-certificates >/dev/null 2>&1
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf"
}

copy_project() {
    rm -rf "$root/hello"
    mkdir -p "$root/hello"
    (cd "$project" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 tar -cf - --ignore-failed-read 2>/dev/null) | tar -xf - -C "$root/hello"
}

trap unmount_all EXIT
unmount_all  # left by a run that was killed
[ "$(cat "$root/.hello-root" 2>/dev/null)" = "$stamp" ] || build
copy_machine_config
copy_project
mount_all
set +e
in_root sh -c 'cd /hello && exec "$@"' sh "$@"
