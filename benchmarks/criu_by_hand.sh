#!/bin/sh
# By-hand check of a differential finding (benchmarks/differential.py): criu straight from the
# userland zdtm/criu_env.py built ($MNTCR_CACHE/criu/trixie), without the mntcr adapter, on a
# container built by hand the way CRIU's zdtm.py ns flavor and our ns flavor build one (a tmpfs
# root, /usr and /etc read-only binds declared --external, a fresh /proc, a private /dev
# tmpfs, pid 1 of its own pid namespace, a session leader), then
#   criu dump -t PID --external mnt[/usr]:usr --external mnt[/etc]:etc
#   criu restore --root DIR --external mnt[usr]:/usr --external mnt[etc]:/etc -d
# with DIR a writable plain directory holding the root's mount points (as zdtm passes --root).
# Prints the container's mountinfo before dump and after restore, or criu's first errors.
#
# Usage (root): unshare -m --propagation private sh benchmarks/criu_by_hand.sh FINDING.yaml|SETUP.sh
# Everything is mounted in that private mount namespace only; the restored tree is killed.
set -e
case "$1" in
    *.yaml) SETUP=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["setup"])' "$1") ;;
    *) SETUP=$(cat "$1") ;;
esac
U=${MNTCR_CACHE:-$HOME/.cache/mntcr}/criu/trixie
[ -x "$U/usr/sbin/criu" ] || { echo "criu_by_hand: no criu userland in $U: run the criu tests once to build it" >&2; exit 2; }
[ "$(findmnt -n -o PROPAGATION /)" = private ] || { echo "criu_by_hand: run me under unshare -m --propagation private" >&2; exit 2; }
mount --bind "$U" "$U"
mount -t tmpfs w "$U/tmp"
printf '%s\n' "$SETUP" | grep -v 'exec zdtm-hold' > "$U/tmp/setup.sh"
mount -t proc proc "$U/proc"
mount --rbind /dev "$U/dev"; mount --make-rprivate "$U/dev"
mount --rbind /sys "$U/sys"; mount --make-rprivate "$U/sys"
mount -t tmpfs r "$U/run"
mkdir -p "$U/tmp/old"
# pivot_root, not chroot: criu refuses a tree whose root is not its mount namespace's root.
cd "$U" && pivot_root . tmp/old && exec chroot . /bin/sh -s <<'EOF'
set -e
umount -l /tmp/old; rmdir /tmp/old
mkdir -p /tmp/ct /tmp/img /tmp/rootdir
unshare -m -p -f --propagation private /bin/bash -c '
  mount -t tmpfs -o mode=0755 tmpfs /tmp/ct
  cd /tmp/ct; mkdir usr etc proc dev mnt tmp run old
  for l in bin lib lib64 sbin; do ln -s usr/$l $l; done
  mount --bind /usr usr; mount -o remount,bind,ro usr
  mount --bind /etc etc; mount -o remount,bind,ro etc
  mount -t proc -o nosuid,nodev,noexec proc proc
  mount -t tmpfs -o nosuid,mode=0755 tmpfs dev; mknod dev/null c 1 3; chmod 666 dev/null
  cp /tmp/setup.sh run/setup.sh
  pivot_root . old; umount -l /old; rmdir /old; cd /
  exec 0</dev/null 1>/dev/null 2>&1 10>&- 255>&-
  . /run/setup.sh
  exec setsid sleep 424242
' </dev/null >/dev/null 2>&1 &
U_PID=$!
for i in $(seq 600); do
  PID=$(cut -d" " -f1 /proc/$U_PID/task/$U_PID/children 2>/dev/null)
  [ -n "$PID" ] && [ "$(tr '\0' ' ' < /proc/$PID/cmdline)" = "sleep 424242 " ] && break
  sleep 0.1
done
criu --version | head -1
echo "== before dump (pid $PID): mountinfo fields 4- of the container"
cut -d" " -f4- /proc/$PID/mountinfo
criu dump -t $PID -D /tmp/img -v4 -o /tmp/img/dump.log --external 'mnt[/usr]:usr' --external 'mnt[/etc]:etc' ||
    { echo "== criu dump FAILED (exit $?):"; grep Error /tmp/img/dump.log | grep -v RLIMIT_NOFILE | head -3; kill -9 $PID; exit 0; }
cd /tmp/rootdir; mkdir usr etc proc dev mnt tmp run; for l in bin lib lib64 sbin; do ln -s usr/$l $l; done
cp -a /tmp/ct/run/. run/ 2>/dev/null || true
criu restore -D /tmp/img -d -v4 -o /tmp/img/restore.log --root /tmp/rootdir --pidfile /tmp/rpid \
    --external 'mnt[usr]:/usr' --external 'mnt[etc]:/etc' ||
    { echo "== criu restore FAILED (exit $?):"; grep Error /tmp/img/restore.log | grep -v RLIMIT_NOFILE | head -3; exit 0; }
R=$(cat /tmp/rpid)
echo "== after restore (pid $R), criu exit 0: mountinfo fields 4- of the container"
cut -d" " -f4- /proc/$R/mountinfo
kill -9 $R
EOF
