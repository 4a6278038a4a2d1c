"""Mapped files that have no name left (engine/mappings.py, engine/dump.py `_place_maps`): a file
unlinked after it was mapped (a library an upgrade replaced) comes back as a ghost on its mount,
mapped by the stand-in and unlinked again; a file mapped from a mount lazily unmounted since keeps
that detached mount alive after restore, with its files. A memfd mapped after its fd was closed,
shared anonymous memory and an aio ring lie on no mount (on the kernel's own, shown deleted): they
are left out, and the dump does not refuse the tree for them."""

from __future__ import annotations

from enginecase import case, load_manifest  # noqa: F401  (fixture)

# The mapping process stays python (an exec would drop its mappings); it holds as `hold` does.
_MAPPER = """
python3 -c '
import ctypes, mmap, os, signal, subprocess
maps = []
def keep(path, unlink=False):
    fd = os.open(path, os.O_RDONLY)
    maps.append(mmap.mmap(fd, 0, prot=mmap.PROT_READ))
    os.close(fd)
    if unlink:
        os.unlink(path)
keep("/mnt/t/libold.so", unlink=True)
keep("/mnt/lazy/cache.bin")
subprocess.run(["umount", "-l", "/mnt/lazy"], check=True)
m = os.memfd_create("buffer"); os.write(m, b"x" * 4096); maps.append(mmap.mmap(m, 4096)); os.close(m)
aio = ctypes.c_ulong(0); assert ctypes.CDLL(None).syscall(206, 8, ctypes.byref(aio)) == 0   # io_setup: /[aio] (deleted)
shared = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)   # /dev/zero (deleted)
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
open("/run/mapped", "w").close()
while True:
    signal.pause()
' </dev/null >/dev/null 2>&1 &
wait_for /run/mapped
hold
"""

SETUP = """
mkdir -p /mnt/t /mnt/lazy
mount -t tmpfs t /mnt/t; mount -t tmpfs lazy /mnt/lazy
{ echo library-v1; head -c 8192 /dev/zero; } > /mnt/t/libold.so
{ echo cache-page; head -c 4096 /dev/zero; } > /mnt/lazy/cache.bin
""" + _MAPPER

# Run in the container: the mapper's maps of the two files, and each file's first line and link count.
CHECK = """
for p in /proc/[0-9]*; do
  grep -q libold $p/maps 2>/dev/null || continue
  grep -E 'libold|cache.bin' $p/maps | awk '{ print $6, $7 }' | sort -u
  for m in $p/map_files/*; do
    case "$(readlink $m)" in *libold*|*cache.bin*) echo "$(head -n 1 $m) links $(stat -L -c %h $m)";; esac
  done | sort -u
done
ls -A /mnt/t /mnt/lazy
"""


def test_deleted_and_detached_mappings_come_back(case):
    before, after = case.roundtrip(SETUP, check=CHECK)
    out = after.snap.check_output
    assert "/mnt/t/libold.so (deleted)" in out and "library-v1 links 0" in out
    assert "/cache.bin" in out and "cache-page links 1" in out
    assert out == before.snap.check_output   # (the memfd: not kept, and no reason to refuse the tree)


def test_the_image_holds_a_ghost_and_a_detached_mount(case):
    pid = case.start(SETUP)
    images = case.new_images_dir()
    case.dump(pid, images)
    doc = load_manifest(images)
    maps = [m for p in doc["processes"] for m in p.get("maps", ())]
    ghost = [m for m in maps if m.get("ghost")]
    assert len(ghost) == 1 and doc["ghosts"][ghost[0]["ghost"]]["path"] == "/libold.so"
    detached = [m for m in maps if m.get("detached")]
    assert [m["path"] for m in detached] == ["/cache.bin"]
    assert str(detached[0]["mnt"]) in doc["detached"]
    case.trees.append(case.restore(images))


def test_mappings_restore_cannot_make_are_left_out_loudly(capsys):
    """A mapping on a detached mount detached.plan refuses (a file of an external filesystem no
    external mount reaches) is left out of the image, and dump says so on stderr, naming the
    process and the path: a mapping alone does not refuse the tree, but never silently."""
    from engine import dump
    from engine.dumperror import DumpError

    procs = [{"pid": 7, "maps": [{"mnt": 40, "path": "/opt/lib.so", "detached": True},
                                 {"mnt": 41, "path": "/kept.so", "detached": True},
                                 {"mnt": 12, "path": "/usr/lib/libc.so.6"}]}]
    items = [({"mnt": 40, "path": "/opt/lib.so", "detached": True}, 7, "map_files/1-2"),
             ({"mnt": 41, "path": "/kept.so", "detached": True}, 7, "map_files/3-4")]

    def plan(group):
        if group[0][0]["mnt"] == 40:
            raise DumpError(95, "no external mount of its filesystem reaches the file")
        return {"41": {"id": 41}}

    detached_doc: dict = {}
    dump._plan_mapped_detached(items, detached_doc, procs, plan)
    assert [m["path"] for m in procs[0]["maps"]] == ["/kept.so", "/usr/lib/libc.so.6"]
    assert list(detached_doc) == ["41"]
    err = capsys.readouterr().err
    assert err.startswith("mntcr dump: note: process 7: its mappings of /opt/lib.so ")
    assert "no external mount of its filesystem reaches the file" in err and "/kept.so" not in err
