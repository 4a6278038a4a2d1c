"""The holder: what a scenario's setup ends in, and how the runner sees it is ready.

The holder lives in the container root, not in the project tree (the project
is not visible in the container), and is plain sh + the host's `sleep`:

    /.zdtm/zdtm-hold      sh script: stdio onto the container's /dev/null, then
                          exec /.zdtm/zdtm-holding infinity
    /.zdtm/zdtm-holding   symlink to the host's sleep (reachable through /usr)

Setup ends in ``exec zdtm-hold`` (/.zdtm is on PATH). The process keeps the
namespaces, root, cwd and fds setup gave it, and sleeps until killed.

Ready protocol: the runner polls /proc/PID/cmdline of the scenario's root
process; it is ready when argv[0] is /.zdtm/zdtm-holding. So the holder has no
control fd at all (nothing to exclude from the compared state, nothing that
points outside the container for criu), and its stdio are files inside its
own root.
"""

from __future__ import annotations

import os
import shutil

HOLD_DIR = "/.zdtm"
HOLD_CMD = "zdtm-hold"
HOLD_ARGV0 = f"{HOLD_DIR}/zdtm-holding"

HOLD_SCRIPT = f"""#!/bin/sh
# zdtm holder: keep namespaces, root, cwd and fds; stdio stay inside the container.
exec </dev/null >/dev/null 2>&1
exec {HOLD_ARGV0} infinity
"""

# Shell helpers for both setup and check scripts (fstests' common/filter): one
# spelling of the filters that keep check output comparable.
HELPERS = r"""# zdtm_wait FILE [SECONDS]: wait until FILE exists (e.g. a background process in a
# nested namespace says it has finished its mounts); default 30 s, which a loaded CI machine needs
# (a failed wait fails the setup: the limit only bounds how long a broken setup takes to say so).
zdtm_wait() {
    _n=$(( ${2:-30} * 20 ))
    while [ ! -e "$1" ]; do
        _n=$((_n - 1)); [ "$_n" -gt 0 ] || { echo "zdtm_wait: $1 did not appear" >&2; return 1; }
        sleep 0.05
    done
}
# zdtm_held PID [COMMAND]: wait until process PID runs COMMAND (default: the holder, i.e. it
# has exec'd zdtm-hold), so that whatever its script did after its ready file (a remount, a lazy
# umount, a chdir) is done before the runner looks.
zdtm_held() {
    _n=600
    while [ "$(cat /proc/$1/comm 2>/dev/null)" != "${2:-HOLD_COMM}" ]; do
        _n=$((_n - 1)); [ "$_n" -gt 0 ] || { echo "zdtm_held: process $1 did not exec ${2:-the holder}" >&2; return 1; }
        sleep 0.05
    done
}
# zdtm_kids PID COMM...: wait until the children of process PID run exactly the COMMs (their
# /proc/N/comm, in any order; a zombie keeps its comm): a background program has forked and exec'd
# what it runs for good (flock's, timeout's command; a shell loop's sleep), readiness by state where
# a fixed sleep lost to a program started late under load.
zdtm_kids() {
    _p=$1; shift; _want=$(printf '%s\n' "$@" | sort | tr '\n' ' '); _n=600
    while :; do
        _got=$(for _c in $(cat /proc/$_p/task/*/children 2>/dev/null); do cat /proc/$_c/comm 2>/dev/null; done | sort | tr '\n' ' ')
        [ "$_got" != "$_want" ] || return 0
        _n=$((_n - 1)); [ "$_n" -gt 0 ] || { echo "zdtm_kids: the children of process $_p run '$_got', not '$_want'" >&2; return 1; }
        sleep 0.05
    done
}
# zdtm_loop_nodes [COUNT]: the container's /dev is private: the loop control node and loop
# device nodes up to COUNT (default 64) past the first free one (a machine may have many loop
# devices in use already; one below it may be freed before `mount -o loop` asks for one).
zdtm_loop_nodes() {
    [ -e /dev/loop-control ] || mknod -m 600 /dev/loop-control c 10 237
    _first=$(losetup -f); _first=${_first#/dev/loop}; _i=0
    while [ "$_i" -lt $((_first + ${1:-64})) ]; do
        [ -e "/dev/loop$_i" ] || mknod -m 600 "/dev/loop$_i" b 7 "$_i"
        _i=$((_i + 1))
    done
}
# zdtm_spaces: runs of blanks (findmnt's column padding) become one space.
zdtm_spaces() { sed 's/[[:space:]]\+/ /g'; }
# zdtm_ids: peer group and master numbers dropped (a restore need not keep them).
zdtm_ids() { sed 's/ shared:[0-9]*/ shared/g;s/ master:[0-9]*/ master/g'; }
# zdtm_mounts DIR [COLUMNS]: DIR and the mounts beneath it in list form, sorted
# (the tree form orders siblings by mount id); COLUMNS default TARGET,SOURCE,PROPAGATION.
zdtm_mounts() { findmnt -n -l -o "${2:-TARGET,SOURCE,PROPAGATION}" -R "$1" | zdtm_spaces | sort; }
# zdtm_kopts: superblock options whose default or display differs between kernels dropped
# (overlay uuid, redirect_dir, index, xino, metacopy, nfs_export; squashfs errors; tmpfs
# inode64/inode32, shown by some kernel configurations only, e.g. Debian's 6.1), so that one
# golden output serves the whole kernel matrix.
zdtm_kopts() { sed 's/,\(uuid\|redirect_dir\|index\|xino\|metacopy\|nfs_export\|errors\)=[a-z]*//g;s/,inode\(64\|32\)\b//g'; }
# zdtm_kmasks: lines of a mount table whose first field is a path runtimes mask only where it
# exists, and which exists only with some kernel configurations (runc/podman/lxc/nspawn cover
# /proc/kcore, /proc/acpi, /proc/sysrq-trigger... with a tmpfs or a read-only bind when the
# kernel has them: Debian's 6.1 guest has /proc/kcore, this host's 6.18 does not), dropped.
zdtm_kmasks() { grep -v -E '^/(proc/(acpi|asound|kcore|latency_stats|timer_stats|sched_debug|scsi|sysrq-trigger)|sys/devices/virtual/powercap)( |$)' || true; }
# zdtm_uid UID: a system user's uid (100-999, which Debian gives its packages' users in the
# order they are installed: memcache was 105 on one machine and 111 on another) as its name in the
# passwd the check sees; one of the scenarios' subordinate range (1-65535 of a container mapped
# to 200000-265534) of such a user as sub:NAME. Others as they are.
zdtm_uid() {
    if [ "$1" -ge 100 ] 2>/dev/null && [ "$1" -lt 1000 ]; then
        _n=$(getent passwd "$1" | cut -d: -f1); echo "${_n:-$1}"
    elif [ "$1" -ge 200099 ] 2>/dev/null && [ "$1" -lt 200999 ]; then
        _n=$(getent passwd $(($1 - 199999)) | cut -d: -f1); echo "${_n:+sub:}${_n:-$1}"
    else
        echo "$1"
    fi
}
# zdtm_host: the host's root device (the source of the container's /usr bind, /dev/sda1 on
# one machine, /dev/vda on another) becomes HOST, with its type when that precedes it, so
# that check output naming host binds is the same on every machine.
zdtm_host() {
    _src=$(findmnt -n -o SOURCE -T /usr | head -n 1 | sed 's/\[.*//')
    _type=$(findmnt -n -o FSTYPE -T /usr | head -n 1)
    # whole fields only: in a VM the root's source is "overlay", which must not eat "ctr-overlay"
    if [ -z "$_src" ]; then cat; else
        sed -E "s#(^|[[:space:]])$_type $_src([[:space:]]|\[|\$)#\1HOST\2#g;s#(^|[[:space:]])$_src([[:space:]]|\[|\$)#\1HOST\2#g"
    fi
}
"""

HELPERS = HELPERS.replace("HOLD_COMM", os.path.basename(HOLD_ARGV0))

# Prepended to every setup script. `set -e`: the first failing command fails
# the setup (reported as a setup error, with the output).
PRELUDE = f"""set -e
export PATH={HOLD_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{HELPERS}"""

# Prepended to every check script (no `set -e`: a check reports what it sees; its exit
# status must be 0 before dump, see zdtm/golden.py).
CHECK_PRELUDE = HELPERS


def install(root: str) -> None:
    """Put the holder script and its sleep link under `root` (a container root being built)."""
    sleep = shutil.which("sleep", path="/usr/bin:/bin")
    if sleep is None:
        raise FileNotFoundError("holder: no `sleep` in /usr/bin or /bin")
    d = os.path.join(root, HOLD_DIR.lstrip("/"))
    os.makedirs(d, mode=0o755, exist_ok=True)
    script = os.path.join(d, HOLD_CMD)
    with open(script, "w") as f:
        f.write(HOLD_SCRIPT)
    os.chmod(script, 0o755)
    os.symlink(os.path.realpath(sleep), os.path.join(root, HOLD_ARGV0.lstrip("/")))


def is_ready(pid: int) -> bool:
    """Whether process `pid` is the holder (argv[0] is the holder's marker)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return argv0 == HOLD_ARGV0.encode()
