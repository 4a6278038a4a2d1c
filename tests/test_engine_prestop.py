"""A refusal leaves the dumped tree running and untouched (engine/prestop.py): what a running tree
already shows is refused before dump stops it, so nothing waiting on it (a parent with WUNTRACED
or WCONTINUED, a ptracer, a job-control shell) sees a stop.

The tree runs a watcher (enginecase.STOP_WATCH) that notes each SIGCONT it gets: a dump that
stopped the tree resumes it with one. The refusals of each kind are tested where their kind is
(tests/test_engine_fdkinds.py, test_engine_proc_pid_gone.py, test_engine_strategy.py), each also
asserting the tree was never stopped; here: that the watcher sees a stop, and the refusals of
namespaces other user namespaces own.
"""

from __future__ import annotations

import os
import re

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)


def _running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "SR"


def test_the_watcher_sees_a_dump_that_stops_the_tree(case):
    """The observation the other tests rely on can fail: a dump with --leave-running stops the tree,
    reads it and resumes it, and the watcher notes the SIGCONT."""
    pid = case.start(STOP_WATCH + "hold\n")
    assert not was_stopped(pid)
    case.dump(pid, case.new_images_dir(), ("--leave-running",))
    assert was_stopped(pid), "the watcher did not see the dump's stop"
    assert _running(pid)


def test_locked_shared_mount_beneath_a_locked_cover_refused_unstopped(case):
    """A process in a mount namespace copied into a user namespace of its own (`unshare -U -r -m
    --propagation unchanged`): a shared tmpfs covered by another tmpfs is copied locked, a slave,
    beneath a locked cover (what nspawn -U leaves beneath /run/host). Restore sets propagation after
    the copy into the user namespace, where no path reaches it: dump refuses naming the mount, before
    it stops anything."""
    pid = case.start(STOP_WATCH + "mkdir /mnt/x; mount -t tmpfs x /mnt/x; mount --make-shared /mnt/x\n"
                     "mount -t tmpfs cover /mnt/x\n"
                     "unshare -U -r -m --propagation unchanged /.hold/mntcr-hold 100000 </dev/null >/dev/null "
                     "2>&1 &\nhold\n")
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"mount \d+ \(/mnt/x\): locked, covered by a locked mount of mount namespace mnt-1 and shared, "
                     r"slave or unbindable: its propagation cannot be rebuilt yet", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _running(pid)


def test_one_superblock_under_two_sources_restored_each_with_its_own(case):
    """mqueue mounted twice in one ipc namespace under two names, and a bind of the second: one
    superblock, three mounts, two sources. Restore mounts it again with the second source (the
    kernel joins the superblock), so each mount keeps its own (scenarios/fstypes/two_sources.yaml
    does the same for sysfs)."""
    setup = ("mkdir -p /run/one /run/two /run/bind; mount -t mqueue mq-one /run/one\n"
             "mount -t mqueue mq-two /run/two; mount --bind /run/two /run/bind\nhold\n")
    check = ("for d in one two bind; do findmnt -n -o TARGET,SOURCE /run/$d; done\n"
             "stat -c %d /run/one /run/two /run/bind | uniq | wc -l")
    before, after = case.roundtrip(setup, check)
    want = ["/run/one", "mq-one", "/run/two", "mq-two", "/run/bind", "mq-two", "1"]
    assert before.snap.check_output.split() == want, before.snap.check_output


def test_one_superblock_of_a_type_that_makes_one_under_two_names_refused_unstopped(case):
    """tracefs (one superblock) mounted twice under two names: restore would make both mounts with
    the first one's (a type mounted again makes no other superblock only where it `joins_by_ns`), so
    dump refuses naming the mount and both sources, before it stops the tree."""
    pid = case.start(STOP_WATCH + "mkdir -p /run/a /run/b; mount -t tracefs tr-a /run/a\n"
                     "mount -t tracefs tr-b /run/b\nhold\n")
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"mount \d+ \(/run/b\) on tracefs: its source 'tr-b' is not 'tr-a', the source of mount \d+ "
                     r"\(/run/a\) of the same filesystem .*: restore makes every mount of a tracefs superblock with "
                     "one source; not supported", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _running(pid)


def test_check_sources_refuses_only_what_restore_cannot_mount_again():
    """The rule on its own: a second source of a superblock passes for a type restore mounts again
    (mqueue, ext4; where peer groups are built while mounting too: engine/construct.py binds members
    only from mounts that show their source), is refused for one it cannot (tracefs), is not looked
    at on an external superblock, and differing sources that name roots (nfs) pass."""
    from engine import fs, prestop

    def doc(fstype, external=None):
        return {"mnt-0": {"root": 1, "mounts": [
            {"id": 1, "mountpoint": "/", "fstype": "tmpfs", "source": "root", "sb": "sb-0"},
            {"id": 2, "mountpoint": "/a", "fstype": fstype, "source": "one", "sb": "sb-1"},
            {"id": 3, "mountpoint": "/b", "fstype": fstype, "source": "two", "sb": "sb-1", "external": external}]}}

    for fstype in ("mqueue", "ext4"):
        prestop.check_sources(doc(fstype), set())
    with pytest.raises(fs.FsError, match=r"mount 3 \(/b\) on tracefs: its source 'two' is not 'one', the source of "
                                         r"mount 2 \(/a\)"):
        prestop.check_sources(doc("tracefs"), set())
    prestop.check_sources(doc("tracefs"), {"sb-1"})
    prestop.check_sources(doc("tracefs", external="key"), set())
    # nfs names a mount's root in its source ("host:/d" for a bind of d): differing sources of one
    # superblock are its roots, not other names (the nfs battery's binds, refused in a 6.1 VM)
    prestop.check_sources(doc("nfs4"), set())


def _refused_unstopped(case, pid: int, pattern: str, extra: tuple = (), externals: tuple | None = None) -> None:
    """Dump refuses the tree at `pid` with a line matching `pattern`, and never stopped it."""
    from enginecase import mntcr
    images = case.new_images_dir()
    dump_externals = ("--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc") if externals is None else externals
    r = mntcr("dump", "-t", str(pid), "-D", images, *dump_externals, *extra)
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: " + pattern + r"\n", r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _running(pid)


def test_external_naming_no_mount_refused_unstopped(case):
    """--external mnt[PATH] where the tree has no mount: refused naming the path, before the stop."""
    pid = case.start(STOP_WATCH + "hold\n")
    _refused_unstopped(case, pid, r"--external: no mount at /nowhere in the dumped namespace",
                       ("--external", "mnt[/nowhere]:k"))


def test_mount_outside_every_external_mount_refused_unstopped(case):
    """/usr declared external, /etc (a bind of the same host filesystem, outside /usr) not: restore
    binds mounts of an external filesystem from its external mounts, and none holds /etc. Refused
    naming /etc, before the stop."""
    if os.stat("/usr").st_dev != os.stat("/etc").st_dev:
        pytest.skip("the host's /usr and /etc are not on one filesystem")
    pid = case.start(STOP_WATCH + "hold\n")
    _refused_unstopped(case, pid, r"mount \d+ \(/etc\) on \w+: its files lie outside every external mount of the "
                                  r"same filesystem; declare it too with --external mnt\[/etc\]:KEY .*",
                       externals=("--external", "mnt[/usr]:usr"))


def test_deleted_root_on_a_type_without_archives_refused_unstopped(case):
    """A bind of a file of an mqueue filesystem, the file then removed: the bind's root is deleted,
    and only a filesystem whose files are dumped can hold it again. Refused naming the mount, before
    the stop."""
    pid = case.start(STOP_WATCH + "mkdir /mnt/q; mount -t mqueue q /mnt/q; touch /mnt/q/x /mnt/f\n"
                     "mount --bind /mnt/q/x /mnt/f; rm /mnt/q/x\nhold\n")
    _refused_unstopped(case, pid, r"mount \d+ \(/mnt/f\) on mqueue: its root /x was deleted; only a .* can hold "
                                  r"it again")


def test_two_deleted_roots_of_one_name_refused_unstopped(case):
    """Two file binds whose sources were unlinked under one name, two files (bwrap's --bind-data
    files when mkstemp repeats a name): restore makes one file a name, so dump refuses naming both
    mounts, before the stop; one file bound twice under its deleted name is no refusal."""
    pid = case.start(STOP_WATCH + "mkdir -p /run/t /m1 /m2 /m3; mount -t tmpfs t /run/t\n"
                     "echo one > /run/t/x; touch /m1/f /m3/f; mount --bind /run/t/x /m1/f; mount --bind /run/t/x /m3/f\n"
                     "rm /run/t/x; echo two > /run/t/x; touch /m2/f; mount --bind /run/t/x /m2/f; rm /run/t/x\n"
                     "umount /run/t\nhold\n")
    _refused_unstopped(case, pid, r"mount \d+ \(/m2/f\): its deleted root /x has the name of another deleted file "
                                  r"of its filesystem, the root of mount \d+ \(/m1/f\): restore makes one file a name; not supported")


def test_deleted_file_on_a_type_without_archives_refused_unstopped(case):
    """A file of an mqueue filesystem held open after it was removed: only a filesystem whose files
    are dumped can hold a deleted file again. Refused naming the fd, before the stop; a deleted file
    on a tmpfs of the tree beside it is no refusal."""
    pid = case.start(STOP_WATCH + "mkdir /mnt/q /mnt/t; mount -t mqueue q /mnt/q; mount -t tmpfs t /mnt/t\n"
                     "touch /mnt/q/x /mnt/t/y; exec 7</mnt/q/x 8</mnt/t/y; rm /mnt/q/x /mnt/t/y\nhold\n")
    _refused_unstopped(case, pid, r"process \d+ fd 7 \(/mnt/q/x \(deleted\)\): a deleted file on mqueue \(only a "
                                  r".* made in the dumped tree can hold it again\)")


def test_external_file_no_process_holds_refused_unstopped(case):
    """--external file[PATH] that no fd of the tree shows: refused naming the path, before the stop."""
    pid = case.start(STOP_WATCH + "exec 7</etc/hostname\nhold\n")
    _refused_unstopped(case, pid, r"--external file\[\]: no process of the tree has /nowhere open",
                       ("--external", "file[/nowhere]:k"))


def test_removed_cwd_on_a_type_without_archives_refused_unstopped(case):
    """The cwd of a process, a directory of a hugetlbfs removed while it was the cwd: only a
    filesystem whose files are dumped can hold it again. Refused naming the process's cwd, before
    the stop."""
    with open("/proc/filesystems") as f:
        if "hugetlbfs" not in f.read():
            pytest.skip("hugetlbfs is not in /proc/filesystems (kernel without CONFIG_HUGETLBFS)")
    pid = case.start(STOP_WATCH + "mkdir /mnt/h; mount -t hugetlbfs h /mnt/h; mkdir /mnt/h/d; cd /mnt/h/d\n"
                     "rmdir /mnt/h/d\nhold\n")
    _refused_unstopped(case, pid, r"process \d+ cwd \(/mnt/h/d \(deleted\)\): a deleted file on hugetlbfs \(only a "
                                  r".* made in the dumped tree can hold it again\)")


def _mapper(*steps: str) -> str:
    """A setup tail: python maps a page of each file named by a `map PATH` step (mmap(2) itself:
    Python's mmap objects keep an fd, which dump would refuse first) and runs each other step as a
    shell command, in order, then holds."""
    body = ("import ctypes, subprocess\nlibc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p\n"
            "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]\n")
    for step in steps:
        if step.startswith("map "):
            body += (f"fd = os.open({step[4:]!r}, os.O_RDONLY)\n"
                     "assert libc.mmap(None, 4096, 1, 1, fd, 0) not in (None, 2 ** 64 - 1); os.close(fd)\n")
        else:
            body += f"subprocess.run({step!r}, shell=True, check=True)\n"
    return py_hold(body)


def test_deleted_mapped_file_on_a_detached_mount_refused_unstopped(case):
    """A file mapped, removed, its tmpfs then lazily unmounted: nothing restore makes can hold the
    deleted file again. Dump used to leave the mapping out of the image (the process came back
    without it); it refuses naming the mapping (its path on the detached mount, as the kernel shows
    it), before the stop."""
    pid = case.start(STOP_WATCH + "mkdir /mnt/lazy; mount -t tmpfs lazy /mnt/lazy; echo x > /mnt/lazy/lib.so\n"
                     + _mapper("map /mnt/lazy/lib.so", "rm /mnt/lazy/lib.so", "umount -l /mnt/lazy"))
    _refused_unstopped(case, pid, r"process \d+ mapping \(/lib.so \(deleted\)\): a deleted file on a "
                                  r"detached mount or one outside the dumped namespaces: not supported yet")


def test_deleted_mapped_file_on_an_external_mount_refused_unstopped(case):
    """A file mapped and removed on a tmpfs declared --external: restore binds the host's directory
    there, which cannot hold it. Dump used to leave the mapping out; it refuses, before the stop."""
    pid = case.start(STOP_WATCH + "mkdir /mnt/e; mount -t tmpfs e /mnt/e; echo x > /mnt/e/lib.so\n"
                     + _mapper("map /mnt/e/lib.so", "rm /mnt/e/lib.so"))
    _refused_unstopped(case, pid, r"process \d+ mapping \(/mnt/e/lib.so \(deleted\)\): a deleted file on tmpfs "
                                  r"\(only a .* made in the dumped tree can hold it again\)",
                       externals=("--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc",
                                  "--external", "mnt[/mnt/e]:e"))


def test_deleted_name_of_a_mapped_file_with_another_name(case):
    """A file of a tmpfs of the tree mapped through a name removed since, while another name (a hard
    link) keeps it (glibc's sem_open maps its temporary name so): restore maps it through that other
    name, as it opens such an fd (placement.want_linked). It was refused ("a mapping of it is not
    supported yet"); dump once left the mapping out. The same mapping once the other name is gone
    too comes back as a ghost (tests/test_engine_mapped_ghosts.py)."""
    setup = ("mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/a; ln /mnt/t/a /mnt/t/b\n"
             + _mapper("map /mnt/t/a", "rm /mnt/t/a"))
    check = ("grep -c '/mnt/t/a (deleted)' /proc/[0-9]*/maps | grep -v ':0$' | wc -l; stat -c '%h' /mnt/t/b; "
             "ls /mnt/t")
    before, after = case.roundtrip(setup, check)
    assert before.snap.check_output.split() == ["1", "1", "b"], before.snap.check_output


def test_dump_asks_the_same_rule_of_roots_it_opens_stopped():
    """Dump compares two deleted roots of one name again once the tree is stopped (a root prestop
    could not open): another file under that name is refused with prestop's text, the same file
    shares its ghost (dump._archive_ghost)."""
    from types import SimpleNamespace
    from engine import dump
    from engine.dumperror import DumpError
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        st = os.fstat(fd)
        d = SimpleNamespace(ghost_for={7: ("sb-1", "/x")}, ghost_of={5: "g-0"},
                            ghosts_doc={"g-0": {"sb": "sb-1", "path": "/x", "inode": "0:0"}},
                            mounts_by_id={5: SimpleNamespace(mountpoint="/m1/f"), 7: SimpleNamespace(mountpoint="/m2/f")})
        with pytest.raises(DumpError, match=r"mount 7 \(/m2/f\): its deleted root /x has the name of another "
                                            r"deleted file of its filesystem, the root of mount 5 \(/m1/f\)"):
            dump._archive_ghost(d, 7, fd)
        d.ghosts_doc["g-0"]["inode"] = f"{st.st_dev}:{st.st_ino}"
        dump._archive_ghost(d, 7, fd)
        assert d.ghost_of[7] == "g-0"
    finally:
        os.close(fd)
