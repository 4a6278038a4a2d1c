"""Engine round trips of the file objects CRIU's zdtm tests leave behind (issue 14/15 remainder):
socket files whose listener is gone (overmount_sock), deleted FIFOs held open (fifo-ghost) and
deleted names of files that are open under several names or still linked elsewhere
(mntns_link_remap: CRIU's link-remap). Each case is built in a throwaway container
(tests/enginecase.py), dumped, restored and compared; the tests also read the restored state.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from enginecase import case  # noqa: F401  (fixture)


def test_socket_files_without_listener(case):
    """Socket files left by listeners that closed (tar archives no sockets): one in plain sight
    with its mode and owner, one beneath an overmount; both come back as socket inodes."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir -p /mnt/t/d/e
python3 -c '
import os, socket
for p in ("/mnt/t/d/s1", "/mnt/t/d/e/s2"):
    s = socket.socket(socket.AF_UNIX); s.bind(p); s.close()
os.chmod("/mnt/t/d/s1", 0o640); os.chown("/mnt/t/d/s1", 12, 34)'
mount -t tmpfs over /mnt/t/d/e
hold
"""
    check = """
stat -c '%n %F %a %u %g' /mnt/t/d/s1
unshare -m --propagation private sh -c 'umount /mnt/t/d/e; stat -c "%n %F" /mnt/t/d/e/s2'
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert "/mnt/t/d/s1 socket 640 12 34" in out
    assert "/mnt/t/d/e/s2 socket" in out


def test_deleted_fifo_with_data(case):
    """CRIU's fifo-ghost: a FIFO unlinked while a read-only fd holds it with 11 bytes buffered;
    another FIFO unlinked while both ends are open in one fd (O_RDWR)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
mkfifo -m 0640 /mnt/t/fifo /mnt/t/both
exec 7<>/mnt/t/fifo 8</mnt/t/fifo 9<>/mnt/t/both
printf 'hello fifo\\n' >&7
rm /mnt/t/fifo /mnt/t/both
exec 7>&-
hold
"""
    check = """
ls -l /proc/1/fd/8 /proc/1/fd/9 | sed 's/.* -> //'
stat -L -c '%F %a %h' /proc/1/fd/8
ls -A /mnt/t
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert "/mnt/t/fifo (deleted)\n/mnt/t/both (deleted)\nfifo 640 0\n" in out
    assert out.endswith("fifo 640 0\n")   # nothing left in /mnt/t
    # The buffered bytes came back: read them through the restored fd.
    fd = os.open(f"/proc/{after.pid}/fd/8", os.O_RDONLY | os.O_NONBLOCK)   # (no writer: never block)
    try:
        assert os.read(fd, 100) == b"hello fifo\n"
    finally:
        os.close(fd)


def test_file_open_under_two_deleted_names(case):
    """CRIU's mntns_link_remap: one file hard-linked as d1/F and d2/F, each bound elsewhere, opened
    through both binds, then both names removed: one inode, no name, two mounts after restore."""
    setup = """
mkdir /mnt/t /mnt/a /mnt/b; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d1 /mnt/t/d2
mount --bind /mnt/t/d1 /mnt/a; mount --bind /mnt/t/d2 /mnt/b
printf 'remapped' > /mnt/t/d1/F; ln /mnt/t/d1/F /mnt/t/d2/F
exec 5</mnt/a/F 6<>/mnt/b/F
rm /mnt/t/d1/F /mnt/t/d2/F
hold
"""
    check = """
ls -l /proc/1/fd/5 /proc/1/fd/6 | sed 's/.* -> //'
[ "$(stat -L -c %i /proc/1/fd/5)" = "$(stat -L -c %i /proc/1/fd/6)" ] && echo "same file"
stat -L -c 'links %h' /proc/1/fd/5
cat /proc/1/fd/5; echo; ls -A /mnt/t/d1 /mnt/t/d2
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert "/mnt/a/F (deleted)\n/mnt/b/F (deleted)\nsame file\nlinks 0\nremapped\n" in out


def test_file_open_under_two_deleted_names_on_one_mount(case):
    """CRIU's unlink_fstat02: F and its hard link L in one directory, opened under each name, both
    removed: each fd comes back under its own name (it came back under F twice)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
printf 'two names' > /mnt/t/F; ln /mnt/t/F /mnt/t/L
exec 5</mnt/t/F 6</mnt/t/L
rm /mnt/t/F /mnt/t/L
hold
"""
    check = """
ls -l /proc/1/fd/5 /proc/1/fd/6 | sed 's/.* -> //'
[ "$(stat -L -c %i /proc/1/fd/5)" = "$(stat -L -c %i /proc/1/fd/6)" ] && echo "same file"
ls -A /mnt/t
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    assert "/mnt/t/F (deleted)\n/mnt/t/L (deleted)\nsame file\n" in after.snap.check_output


def test_deleted_name_of_linked_file(case):
    """A deleted name of a file that keeps another name (CRIU's link-remap case): the fd comes back
    on the same inode as the remaining name, and no extra name is left behind."""
    setup = """
mkdir /mnt/t /mnt/a; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d
mount --bind /mnt/t/d /mnt/a
printf 'still linked' > /mnt/t/keep; ln /mnt/t/keep /mnt/t/d/gone
exec 7</mnt/a/gone
rm /mnt/t/d/gone
hold
"""
    check = """
ls -l /proc/1/fd/7 | sed 's/.* -> //'
[ "$(stat -L -c %i /proc/1/fd/7)" = "$(stat -c %i /mnt/t/keep)" ] && echo "same file"
stat -c 'links %h' /mnt/t/keep; ls -A /mnt/t/d
"""
    *_, after = case.roundtrip(setup, check=check, iters=2)
    out = after.snap.check_output
    assert out == "/mnt/a/gone (deleted)\nsame file\nlinks 1\n"


def test_hostile_ghost_link_records_are_refused(case):
    """The ghost fields link-remap adds (links, linked) pass the validator when dump wrote them and
    are refused, with one line, when they leave the filesystem or contradict each other."""
    from engine import image
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
echo x > /mnt/t/a; ln /mnt/t/a /mnt/t/b; ln /mnt/t/a /mnt/t/keep
exec 5</mnt/t/a 6</mnt/t/b
rm /mnt/t/a /mnt/t/b
mkfifo /mnt/t/p; exec 7<>/mnt/t/p; rm /mnt/t/p
hold
"""
    pid = case.start(setup)
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = image.load(images)
    linked = next(gid for gid, g in doc["ghosts"].items() if g.get("linked"))
    assert doc["ghosts"][linked]["linked"] == "/keep" and doc["ghosts"][linked]["links"] == ["/b"]
    archived = next(gid for gid, g in doc["ghosts"].items() if not g.get("linked"))
    assert doc["ghosts"][archived]["only"] == "p"

    def refused(mutate, match):
        bad = copy.deepcopy(doc)
        mutate(bad["ghosts"])
        with open(os.path.join(images, image.MANIFEST), "w") as f:
            json.dump(bad, f)
        with pytest.raises(image.ImageError, match=match):
            image.load(images)

    refused(lambda g: g[linked].update(links=["/../etc/shadow"]), r"\.\.")
    refused(lambda g: g[linked].update(linked="/"), "not the root")
    refused(lambda g: g[linked].update(links=["/keep"]), "must differ")
    refused(lambda g: g[linked].update(file=g[archived]["file"]), "has no archive")
    refused(lambda g: g[archived].pop("only"), "or 'linked'")
    refused(lambda g: g[linked].update(links=[f"/n{i}" for i in range(100)]), "at most")


def test_deleted_host_file_bind_is_refused_then_external(case, tmp_path):
    """systemd-nspawn's boot_id on a host whose /run is no tmpfs of the tree: a host file (here on
    the host's root filesystem) bound into the container and deleted on the host. Dump refuses,
    naming the mount and the flag, with the tree left running; declared external, it restores
    as a bind of the file restore is given."""
    import re
    from enginecase import CRError
    src = tmp_path / "boot_id"
    src.write_text("0123-boot-id\n")
    pid = case.start("hold\n", binds=((str(src), "/run/boot_id"),))
    src.unlink()
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    # (the CLI shortens the long root path in the middle)
    assert re.search(r"mount \d+ \(/run/boot_id\) on \w+: its root .*--external mnt\[/run/boot_id\]:KEY and give "
                     r"restore the file", str(err.value)), err.value
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in "SR"
    images = case.new_images_dir()
    case.dump(pid, images, ("--external", "mnt[/run/boot_id]:bootid"))
    new = tmp_path / "boot_id.new"
    new.write_text("4567-boot-id\n")
    restored = case.restore(images, ("--external", f"mnt[bootid]:{new}"))
    with open(f"/proc/{restored}/root/run/boot_id") as f:
        assert f.read() == "4567-boot-id\n"


def test_deleted_host_tmpfs_file_bind_restores(case):
    """systemd-nspawn's boot_id on a systemd host: the source lies on the host's /run, a tmpfs outside
    the dumped namespaces (here the host's /dev/shm), and is deleted after the bind. Only the bind
    reaches it: it comes back as an unlinked file on a tmpfs of its own, with its content and
    mode, and its mount root still shows it deleted."""
    import tempfile
    fd, src = tempfile.mkstemp(prefix="mntcr-test-boot_id-", dir="/dev/shm")
    os.write(fd, b"89ab-boot-id\n")
    os.fchmod(fd, 0o444)
    os.close(fd)
    try:
        pid = case.start("hold\n", binds=((src, "/run/boot_id"),))
    finally:
        os.unlink(src)
    check = "cat /run/boot_id; stat -c '%a' /run/boot_id; grep ' /run/boot_id ' /proc/self/mountinfo | cut -d' ' -f4 | sed 's,.*/,,'"
    from enginecase import take, assert_same
    before = take(pid, check)
    images = case.new_images_dir()
    case.dump(pid, images)
    after = take(case.restore(images), check)
    assert_same(before, after)
    assert after.snap.check_output == "89ab-boot-id\n444\ndeleted\n"
