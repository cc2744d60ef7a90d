#!/usr/bin/env bash
# tests/fresh/run.sh [WORK_DIR] - the README on a fresh machine: debootstrap a minimal Debian 12
# (bookworm) root into a scratch folder, put a clean clone of this repository's HEAD in it (and
# the ../shared folder beside the repository, when there is one), and inside a chroot run the
# README's two commands exactly as README.md writes them (`./build.sh train`, `./build.sh
# test`), as root, with no CUDA toolkit there. Prints the time each command took and a final
# PASS or FAIL; the output of each command is kept in WORK_DIR/logs.
#
# Not part of `./build.sh test`: it needs root (debootstrap, chroot, mounts), the network (the
# Debian mirror, PyPI) and a long while (tens of minutes on 2 cores). WORK_DIR defaults to a new
# folder under /tmp; the root inside it is removed at the end, on every exit path, after its
# mounts (/proc, /sys, the host's /sys/fs/cgroup tree, /dev, /dev/pts, a tmpfs on /dev/shm for
# MPI's shared memory) are undone and any process still running inside it is stopped.
# The host's resolver, local CA certificates and /etc/pip.conf are copied in (the site's network
# setup, not the project's), so the root reaches the mirrors the host reaches.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), FRESH_KEEP_ROOT=1 keeps the
# root (unmounted) for a look afterwards.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
die() { echo "fresh: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
command -v debootstrap > /dev/null || die "needs debootstrap (apt-get install debootstrap)"
git -C "$REPO" rev-parse HEAD > /dev/null 2>&1 || die "'$REPO' is not a git checkout"
WORK=${1:-$(mktemp -d /tmp/dstrain-fresh.XXXXXX)}
mkdir -p "$WORK/logs" || die "cannot make '$WORK/logs'"
WORK=$(cd "$WORK" && pwd)
ROOT=$WORK/root
[ ! -e "$ROOT" ] || die "'$ROOT' exists already: give another WORK_DIR"
HOME_IN=/home/user   # where the repository and shared/ live inside the root

# The README's commands: the lines of its first sh block that start with ./build.sh, without
# their comments.
mapfile -t COMMANDS < <(awk '/^```sh/ { inblock = 1; next } /^```/ { if (inblock) exit }
    inblock && /^\.\/build\.sh / { sub(/[ \t]*#.*/, ""); print }' "$REPO/README.md")
[ "${#COMMANDS[@]}" -eq 2 ] || die "expected two ./build.sh commands in README.md's first sh block, found ${#COMMANDS[@]}"

MOUNTS=()   # mounted points, in mount order
inside_pids() {  # processes whose root is the fresh root
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2> /dev/null) || continue
        [ "$r" = "$ROOT" ] && echo "${p#/proc/}"
    done
}
cleanup() {
    local i p left
    for p in $(inside_pids); do kill "$p" 2> /dev/null; done
    sleep 1
    for p in $(inside_pids); do kill -9 "$p" 2> /dev/null; done
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTS[i]}" 2> /dev/null || umount -R -l "${MOUNTS[i]}" 2> /dev/null \
            || echo "fresh: could not unmount ${MOUNTS[i]}" >&2
    done
    left=$(awk -v r="$ROOT" 'index($2, r) == 1' /proc/mounts)
    if [ -n "$left" ]; then
        echo "fresh: mounts left under $ROOT, not removing it:" >&2
        echo "$left" >&2
    elif [ -d "$ROOT" ] && [ "${FRESH_KEEP_ROOT:-0}" != 1 ]; then
        rm -rf --one-file-system "$ROOT"
    fi
    echo "fresh: logs in $WORK/logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mnt() {  # mnt MOUNTPOINT MOUNT_ARGS...
    local at=$1
    shift
    mkdir -p "$at" && mount "$@" "$at" || die "mount $* $at failed"
    MOUNTS+=("$at")
}

start=$SECONDS
echo "fresh: debootstrap bookworm (minbase) into $ROOT from $MIRROR"
if ! debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" > "$WORK/logs/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/logs/debootstrap.log"
    echo "FAIL: debootstrap"
    exit 1
fi
echo "fresh: debootstrap took $((SECONDS - start)) s"

# the repository as a new user gets it: a clone of HEAD (nothing uncommitted, nothing ignored)
mkdir -p "$ROOT$HOME_IN"
git clone -q --no-hardlinks "$REPO" "$ROOT$HOME_IN/dstrain" || die "git clone failed"
echo "fresh: cloned $(git -C "$ROOT$HOME_IN/dstrain" log -1 --format='%h %s')"
if [ -d "$REPO/../shared" ]; then cp -a "$REPO/../shared" "$ROOT$HOME_IN/shared"; fi
# the site's network setup, as any machine of this site has it: the resolver, and where egress
# goes through a TLS-inspecting proxy, its local CA certificates (added to the system bundle
# when ca-certificates is installed inside) and pip's site config that points pip at that bundle
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"

mnt "$ROOT/proc" -t proc proc
mnt "$ROOT/sys" -t sysfs sysfs
# the host's cgroup tree (slurmd will not start without one, and every booted machine has it),
# with its submounts, made a slave so that unmounting it here never reaches the host
if mountpoint -q /sys/fs/cgroup; then
    mnt "$ROOT/sys/fs/cgroup" --rbind /sys/fs/cgroup
    mount --make-rslave "$ROOT/sys/fs/cgroup"
fi
mnt "$ROOT/dev" --bind /dev
mnt "$ROOT/dev/pts" --bind /dev/pts
mnt "$ROOT/dev/shm" -t tmpfs -o mode=1777,size=50% tmpfs

# COMMAND in the repository inside the root, in a clean environment. In the background with a
# wait, so that a signal to this script ends it at once (bash runs a trap only after a
# foreground child ends); the cleanup then stops what still runs inside the root.
run_inside() {  # run_inside LOG COMMAND
    chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd $HOME_IN/dstrain && $2" > "$1" 2>&1 &
    wait $!
}

run_inside "$WORK/logs/nvcc.log" "command -v nvcc || ls -d /usr/local/cuda* 2> /dev/null"
[ -s "$WORK/logs/nvcc.log" ] && die "a CUDA toolkit is inside the root: $(cat "$WORK/logs/nvcc.log")"
echo "fresh: no CUDA toolkit inside the root"

verdict=PASS
i=0
for c in "${COMMANDS[@]}"; do
    i=$((i + 1))
    log="$WORK/logs/command$i.log"
    echo "fresh: running '$c' (output in $log)"
    t0=$SECONDS
    run_inside "$log" "$c"
    rc=$?
    echo "fresh: '$c' exit $rc after $((SECONDS - t0)) s"
    if [ $rc -ne 0 ]; then
        tail -n 40 "$log"
        verdict=FAIL
        break
    fi
    tail -n 12 "$log"
done
echo "fresh: total $((SECONDS - start)) s"
echo "$verdict"
[ "$verdict" = PASS ]
