"""Hostile images and hostile trees against session 20's surface: blocked signals, the child
subreaper flag, the parent-death signal, the THP-disable bit (engine/standin.py's detach), UTS
host and domain names, empty roots of unmounted superblocks (engine/filler.py), System V
msg_qbytes and SHM_LOCK (engine/sysvipc.py), and at dump time the calls run inside a stopped
process (engine/inject.py, engine/seccomp_eval.py).

The image is a real dump of a tree with each of those (a parent that is a subreaper with THP off
and a blocked signal, a child with a parent-death signal, a NIS domain name, a queue with its
msg_qbytes raised, a locked segment, two empty binds of an unmounted tmpfs), changed the way an
attacker with write access to the image directory would. Each is refused with exit status 2 and
one line, nothing left running or mounted, nothing of the host touched
(test_hardening_hostile.refused), or restores with what the image says given to the tree alone.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile

import time

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import enginecase
from engine import image, imageformat
from enginecase import CRError, case, load_manifest  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, refused
from test_hardening_s19 import _MUTATIONS

_BODY = """
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
def ok(r):
    if r == -1:
        raise OSError(ctypes.get_errno(), "setup")
    return r
ok(libc.setdomainname(b"dom21", 5))
open("/proc/sys/kernel/msgmnb", "w").write("50000")
q = ok(libc.msgget(0x71, 0o1600))
buf = ctypes.create_string_buffer(512); ok(libc.msgctl(q, 2, buf))
ctypes.c_ulong.from_buffer(buf, 88).value = 40000; ok(libc.msgctl(q, 1, buf))
open("/proc/sys/kernel/msgmnb", "w").write("16384")
ok(libc.shmctl(ok(libc.shmget(0x81, 4096, 0o1600)), 11, None))
ok(libc.prctl(36, 1, 0, 0, 0)); ok(libc.prctl(41, 1, 0, 0, 0))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
r, w = os.pipe()
if os.fork() == 0:
    ok(libc.prctl(1, signal.SIGTERM, 0, 0, 0))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    os.close(r); os.close(w)
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    libc.prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
os.close(w); os.read(r, 1); os.close(r)
"""
SETUP = """
mkdir -p /mnt/t /mnt/pa /mnt/pb
mount -t tmpfs t /mnt/t
mkdir /mnt/t/a /mnt/t/b; chmod 1750 /mnt/t/a; chown 7:8 /mnt/t/b
mount --bind /mnt/t/a /mnt/pa; mount --bind /mnt/t/b /mnt/pb
umount /mnt/t
""" + enginecase.py_hold(_BODY)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The dumped tree of SETUP."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _invalid(img: str, mutate, pattern: str) -> None:
    """The manifest of `img` changed by `mutate` fails validation in one line matching `pattern`."""
    doc = load_manifest(img)
    imageformat.validate(json.loads(json.dumps(doc)))
    mutate(doc)
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "\n" not in str(e.value) and re.search(pattern, str(e.value)), e.value


def _parent(d) -> dict:
    return d["processes"][0]


def _child(d) -> dict:
    return d["processes"][1]


def _empties(d) -> list[dict]:
    return next(sb["empty_roots"] for sb in d["superblocks"].values() if sb.get("empty_roots"))


def _ipc(d) -> dict:
    return next(iter(d["sysvipc"].values()))


def test_image_has_what_the_tests_change(image_dir):
    """The dump holds every field the tests below change (else they would pass for nothing)."""
    d = load_manifest(image_dir)
    p, c = _parent(d), _child(d)
    assert (p.get("child_subreaper"), p.get("thp_disable"), p.get("sig_blocked"), "pdeathsig" in p) == \
        (True, True, 1 << 11, False), p
    assert (c.get("pdeathsig"), c.get("sig_blocked")) == (15, 1 << 9 | 1 << 11), c
    assert sorted(e["root"] for e in _empties(d)) == ["/a", "/b"]
    assert list(d["domainnames"].values()) == ["dom21"] and list(d["hostnames"].values()) == ["mntcr-test"]
    ipc = _ipc(d)
    assert [q.get("qbytes") for q in ipc["msg"]] == [40000] and [s.get("locked") for s in ipc["shm"]] == [True], ipc


# --- UTS names (engine/kernel.py set_uts_names, in the stand-in's new UTS namespace) ------------

@pytest.mark.parametrize("key", ["hostnames", "domainnames"])
def test_uts_name_past_64_bytes_refused(image_dir, tmp_path, key):
    """64 characters of two bytes each (the rule counted characters; the kernel counts bytes): the
    restore made the tree's namespaces, then failed with "Invalid argument" alone (a domain name:
    "setdomainname: Invalid argument"). Refused by the validator now, before anything is made."""
    refused(_mutated(image_dir, tmp_path, lambda d: d[key].update({k: "\u00e9" * 64 for k in d[key]})),
            r"bad image: (hostname|domain name) of uts-\d+: must be a string of at most 64 bytes", tmp_path)


@pytest.mark.parametrize("name", ["\ud800", "a\0b", "x" * 65, 7])
def test_uts_name_the_kernel_cannot_take_refused(image_dir, name):
    """A lone surrogate (no byte string: sethostname could not encode it), a NUL, 65 bytes, no
    string: refused by the validator. (64 bytes a dump read as surrogates pass: test below.)"""
    for key in ("hostnames", "domainnames"):
        _invalid(image_dir, lambda d: d[key].update({k: name for k in d[key]}), r"at most 64 bytes")


def test_uts_names_of_undecodable_bytes_restored_in_the_trees_namespace(image_dir, tmp_path):
    """64 bytes that are no UTF-8 (dump reads them as surrogates) are the kernel's limit, restored
    as they were; in the tree's UTS namespace alone: the test's own names are unchanged."""
    import socket
    raw = bytes(range(0x80, 0xc0))
    name = raw.decode("utf-8", "surrogateescape")
    ours = (socket.gethostname(), _domainname("self"))
    img = _mutated(image_dir, tmp_path, lambda d: [d[k].update({u: name for u in d[k]})
                                                   for k in ("hostnames", "domainnames")])
    pid = _restored(img, tmp_path)
    try:
        assert _uts(pid) == [raw, raw]
    finally:
        _kill(pid)
    assert (socket.gethostname(), _domainname("self")) == ours


def _uts(pid: int) -> list[bytes]:
    """[hostname, domain name] of `pid`'s UTS namespace (/proc/sys shows the reader's)."""
    import subprocess
    out = subprocess.run(["nsenter", "-t", str(pid), "-u", "cat", "/proc/sys/kernel/hostname",
                          "/proc/sys/kernel/domainname"], capture_output=True, check=True).stdout
    return out.split(b"\n")[:2]


def _domainname(pid) -> bytes:
    with open("/proc/sys/kernel/domainname", "rb") as f:
        return f.read().rstrip(b"\n")


def _restored(img: str, tmp_path) -> int:
    """The pid of the root of `img` restored (the test kills it)."""
    return enginecase.EngineCase(str(tmp_path)).restore(img)


def _kill(pid: int) -> None:
    from zdtm.snapshot import kill_tree
    kill_tree(pid)


# --- empty roots of unmounted superblocks (engine/filler.py) ------------------------------------

@pytest.mark.parametrize("roots", [["/zz/yy"], ["/" + "d/" * 2000 + "e"], [f"/{i}/x" for i in range(20000)]],
                         ids=["other-path", "deep", "many"])
def test_empty_root_of_no_mount_refused(image_dir, tmp_path, roots):
    """Empty roots that are the root of no mount of the superblock (dump records only those): the
    restore made each as directories of the tree's tmpfs, as many as the manifest held (20,000
    here, 2,000 deep in one). Refused by the validator now: the list is bounded by the mounts."""
    refused(_mutated(image_dir, tmp_path, lambda d: _empties(d).extend(
                dict(_empties(d)[0], root=r) for r in roots)),
            r"bad image: superblock sb-\d+ \(tmpfs\): empty root '/.*' is the root of no mount of it", tmp_path)


def test_empty_root_dotdot_refused(image_dir):
    """'..' and a relative path never reach the filler (path_rule)."""
    for bad in ("/../x", "a", "/a/../../b"):
        _invalid(image_dir, lambda d: _empties(d)[0].update(root=bad), r"empty_roots\[0\]\.root")


# --- blocked signals, subreaper, parent-death signal, THP (engine/standin.py detach) -------------

def _status(pid, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith(key + ":"))


_ALL = (1 << 64) - 1


def _every_bit(d) -> None:
    """Every signal blocked and ignored, a subreaper and THP off in every process; the child's
    parent-death signal SIGKILL."""
    for p in d["processes"]:
        p.update(sig_blocked=_ALL, sig_ignored=_ALL, child_subreaper=True, thp_disable=True)
    _child(d)["pdeathsig"] = 9


def test_process_bits_are_the_stand_ins_own(image_dir, tmp_path):
    """Every signal blocked (the C library's own 32 and 33 too) and ignored, subreaper and THP off
    everywhere, SIGKILL as the child's parent-death signal: the restored processes have them, the
    restorer's process (the test's) none of them, and the tree still dies of the SIGKILL no mask
    blocks (kill_tree). The mask came back without 32 and 33 (glibc's sigprocmask leaves them out):
    a restore that "succeeded" with another mask than the image's."""
    from engine import pdeathsig, subreaper
    ours = (_status("self", "SigBlk"), _status("self", "SigIgn"), _status("self", "THP_enabled"))
    pid = _restored(_mutated(image_dir, tmp_path, _every_bit), tmp_path)
    try:
        child = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
        for p in (pid, child):
            # (SIGKILL and SIGSTOP are never blocked nor ignored)
            assert (_status(p, "SigBlk"), _status(p, "SigIgn")) == ("fffffffffffbfeff", "fffffffffffbfeff"), p
            assert _status(p, "THP_enabled") == "0" and subreaper.read(p), p
        assert (pdeathsig.read(pid), pdeathsig.read(child)) == (0, 9)
    finally:
        _kill(pid)
    assert (_status("self", "SigBlk"), _status("self", "SigIgn"), _status("self", "THP_enabled")) == ours


def test_blocked_signals_do_not_keep_a_failed_tree_alive(image_dir, tmp_path):
    """Every signal blocked and ignored, and the child's last steps failing (its filter, installed
    last, kills it at its next call): the restore fails in one line and nothing is left running
    (the restorer and the root kill with SIGKILL, which no mask holds back)."""
    from test_hardening_s20 import _RET_KILL_ALL

    def mutate(d):
        _every_bit(d)
        _child(d).update(seccomp=[{"insns": _RET_KILL_ALL, "log": False}], no_new_privs=True)
    refused(_mutated(image_dir, tmp_path, mutate), r"process \d+: it ended before it (answered its detach|told)",
            tmp_path, timeout=100)


def test_a_mask_with_the_c_librarys_signals_comes_back(case):
    """A process that blocks every signal by the raw call (runtimes that do not go through glibc,
    which leaves 32 and 33 out): the snapshot compares its mask; it came back without 32 and 33."""
    body = """
import ctypes
ctypes.CDLL(None, use_errno=True).syscall(14, 2, ctypes.byref(ctypes.c_uint64((1 << 64) - 1)), None, 8)
"""
    before, after = case.roundtrip(enginecase.py_hold(body))
    masks = [line.split("sigblk=")[1].split()[0] for p in after.snap.procs for line in p.text().splitlines()
             if "sigblk=" in line]
    assert masks == ["fffffffffffbfeff"], masks


# --- dump: calls run inside a stopped process of a hostile tree (engine/inject.py) ---------------

def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


_NOTED = """
import signal
def note(n, _):
    with open("/run/.got", "a") as f:
        f.write(f"{n}\\n")
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGRTMIN):
    signal.signal(s, note)
if os.fork() == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(1, signal.SIGHUP, 0, 0, 0)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
"""


def _got(pid: int, want: int) -> list[int]:
    """The signals the tree at `pid` noted having taken, once `want` of them came (at most 60 s)."""
    import time
    path = f"/proc/{pid}/root/run/.got"
    for _ in range(1200):
        if os.path.exists(path) and len(open(path).read().split()) >= want:
            break
        time.sleep(0.05)
    return sorted(int(n) for n in open(path).read().split()) if os.path.exists(path) else []


@pytest.mark.skipif(not __import__("engine.inject").inject.SUPPORTED, reason="engine/inject.py runs on x86-64 only")
def test_signals_pending_in_a_stopped_process_survive_the_dump(case):
    """A child stopped before the dump with three signals pending that it handles: the call dump
    runs in it (PR_GET_PDEATHSIG, getitimer) stopped for each on its way (a signal-delivery stop);
    the first was kept and given back, the second ended the calls and was lost: the dump
    succeeded (the child's parent-death signal silently not kept) and the child's handler for it
    never ran. Every signal is blocked while the calls run now: all three are taken once the
    child is continued, and the parent-death signal is read."""
    import signal
    from zdtm.snapshot import tree_pids
    pid = case.start(enginecase.py_hold("import ctypes\n" + _NOTED))
    child = next(p for p in tree_pids(pid) if p != pid)
    os.kill(child, signal.SIGSTOP)
    sigs = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGRTMIN)
    for s in sigs:
        os.kill(child, s)
    images = case.new_images_dir()
    case.dump(pid, images, ("--leave-running",))
    assert _state(child) == "T"
    os.kill(child, signal.SIGCONT)
    assert _got(pid, 3) == sorted(sigs)
    assert _child(load_manifest(images)).get("pdeathsig") == signal.SIGHUP


# A 32-bit process with no C library: its seccomp filter kills i386 sync(2) (36, the number of
# x86-64's getitimer), it is a child subreaper with one child (so dump asks it), then it sleeps.
_P32 = r"""
struct insn { unsigned short code; unsigned char jt, jf; unsigned int k; };
static struct insn prog[] = {
    {0x20, 0, 0, 4}, {0x15, 0, 3, 0x40000003},   /* ld arch; jeq I386 ? next : allow */
    {0x20, 0, 0, 0}, {0x15, 0, 1, 36},           /* ld nr; jeq 36 ? kill : allow */
    {0x06, 0, 0, 0x80000000}, {0x06, 0, 0, 0x7fff0000},
};
static struct { unsigned short len; struct insn *filter; } fprog = {6, prog};
static long sys(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}
void _start(void) {
    sys(172, 38, 1, 0);                       /* prctl(PR_SET_NO_NEW_PRIVS) */
    if (sys(172, 22, 2, (long)&fprog))        /* prctl(PR_SET_SECCOMP, FILTER) */
        sys(1, 1, 0, 0);
    sys(172, 36, 1, 0);                       /* prctl(PR_SET_CHILD_SUBREAPER, 1) */
    sys(2, 0, 0, 0);                          /* fork */
    sys(172, 15, (long)"mntcr-hold", 0);      /* PR_SET_NAME: ready */
    for (;;)
        sys(29, 0, 0, 0);                     /* pause */
}
"""


def _p32(tmp_path) -> bytes:
    """_P32 built (static, 32-bit); a skip when this machine cannot build it."""
    import subprocess
    src, out = tmp_path / "p32.c", tmp_path / "p32"
    src.write_text(_P32)
    r = subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-fno-pie", "-no-pie", "-O1", "-o", str(out), str(src)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no 32-bit build here (gcc -m32 -nostdlib): {r.stderr.strip().splitlines()[-1:]}")
    return out.read_bytes()


@pytest.mark.skipif(not __import__("engine.inject").inject.SUPPORTED, reason="engine/inject.py runs on x86-64 only")
def test_a_32_bit_parent_is_refused_naming_why_and_runs_on(case, tmp_path):
    """A 32-bit parent (x86-64 kernel, i386 code: its `syscall` takes i386 numbers, its filters see
    another arch than the evaluator's): dump wrote `syscall` into its code, ran up to its system
    call stop and stopped there ("process N stopped elsewhere (signal 133)"), then advised to dump as
    root with CAP_SYS_PTRACE. No call is run in 32-bit code now: refused before anything is
    written, naming why; the tree runs on, both processes alive."""
    import base64
    from zdtm.snapshot import tree_pids
    blob = base64.b64encode(_p32(tmp_path)).decode()
    pid = case.start(f"echo {blob} | base64 -d > /run/p32; chmod 755 /run/p32; exec /run/p32 </dev/null >/dev/null 2>&1")
    pids = tree_pids(pid)
    assert len(pids) == 2
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(r"process \d+: its child subreaper flag cannot be read \(process \d+ runs 32-bit code: no call "
                     r"is run in it\)$", msg.strip()), msg
    assert tree_pids(pid) == pids and all(_state(p) == "S" for p in pids)


# A process dump runs calls in, hostile in one way (argv[1]); "ready" on stdout, then it waits in
# pause(2) for good (made by the raw instruction where its stack pointer is set: no stack used).
_HOSTILE_C = r"""
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void wait_on(void *sp) {
    puts("ready");
    fflush(stdout);
    if (sp)
        __asm__ volatile("mov %0, %%rsp\n1: mov $34, %%eax\nsyscall\njmp 1b" :: "r"(sp));
    for (;;)
        pause();
}

/* prctl(PR_GET_PDEATHSIG, ...) answered `action`; ip_kills: killed unless made at address 0 */
static void filter(unsigned action, int ip_kills, unsigned flags) {
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_GET_PDEATHSIG, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, ip_kills ? 1 : 0, 0),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fp = {sizeof(prog) / sizeof(prog[0]), prog};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp) < 0) {
        perror("seccomp");
        _exit(1);
    }
}

int main(int argc, char **argv) {
    const char *how = argv[1];
    prctl(PR_SET_PDEATHSIG, 10);
    if (!strcmp(how, "shared-stack")) {   /* its stack pointer in a shared mapping of a file */
        int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
        char *m;
        if (fd < 0 || ftruncate(fd, 4096) || (m = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
            return 1;
        wait_on(m + 2048);
    } else if (!strcmp(how, "no-stack")) {   /* its stack pointer on no mapping */
        wait_on((void *)4096);
    } else if (!strcmp(how, "uffd-stack")) {   /* on a page userfaultfd serves, no one serving it */
        int uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
        struct uffdio_api api = {.api = UFFD_API};
        char *m = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        struct uffdio_register reg = {.range = {(unsigned long)m, 8192}, .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg))
            return 1;
        wait_on(m + 4096 + 2048);
    } else if (!strcmp(how, "notif")) {
        filter(SECCOMP_RET_USER_NOTIF, 0, SECCOMP_FILTER_FLAG_NEW_LISTENER);
    } else if (!strcmp(how, "trace")) {
        filter(SECCOMP_RET_TRACE, 0, 0);
    } else if (!strcmp(how, "trap")) {
        filter(SECCOMP_RET_TRAP, 0, 0);
    } else if (!strcmp(how, "ip")) {
        filter(SECCOMP_RET_KILL_PROCESS, 1, 0);
    } else if (!strcmp(how, "shift")) {   /* prctl killed unless 1 << X (X = 32) is 0: the kernel masks X to 31 */
        struct sock_filter prog[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 5),
            BPF_STMT(BPF_LDX | BPF_IMM, 32),
            BPF_STMT(BPF_LD | BPF_IMM, 1),
            BPF_STMT(BPF_ALU | BPF_LSH | BPF_X, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog fp = {sizeof(prog) / sizeof(prog[0]), prog};
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp) < 0)
            return 1;
    }
    wait_on(0);
    return 0;
}
"""


@pytest.fixture(scope="module")
def hostile_bin(tmp_path_factory):
    """_HOSTILE_C built; a skip where it cannot be (no compiler, not x86-64)."""
    import subprocess
    from engine import inject
    if not inject.SUPPORTED:
        pytest.skip("engine/inject.py runs calls on x86-64 only")
    d = tmp_path_factory.mktemp("hostile-c")
    (d / "host.c").write_text(_HOSTILE_C)
    r = subprocess.run(["gcc", "-O1", "-o", str(d / "host"), str(d / "host.c")], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no C compiler here: {r.stderr.strip()[-200:]}")
    return str(d / "host")


def _syscall_line(pid: int, state: str = "S") -> str:
    """/proc/PID/syscall once it waits in pause(2) again (in `state`): the call, its arguments,
    stack pointer and program counter (at most 60 s: it runs back into the wait after a call ran
    in it, or after SIGCONT, when a loaded machine gives it a CPU)."""
    import time
    deadline = time.monotonic() + 60
    while True:
        with open(f"/proc/{pid}/syscall") as f:
            line = f.read().strip()
        if line.startswith("34 ") and _state(pid) == state or time.monotonic() > deadline:
            return line
        time.sleep(0.05)


@pytest.mark.parametrize("stop", [True, False], ids=["stopped", "running"])
@pytest.mark.parametrize("how, want", [
    ("plain", 10),
    ("shared-stack", 10),   # (before: read, the words written into the file's page)
    ("no-stack", 10),       # (before: not read, EIO)
    ("uffd-stack", None),   # (its page cannot be read: no wait for a server that never answers)
    ("notif", None), ("trace", None), ("trap", None), ("ip", None),
    ("shift", None),        # (before: sent, and the process killed by its filter)
])
def test_a_hostile_process_is_left_as_it_was(hostile_bin, tmp_path, how, want, stop):
    """Its parent-death signal (SIGUSR1) read by a call run in it, or not read when a filter would
    not let the call through as the process would make it: answered by a supervisor that never
    answers (USER_NOTIF: a wait for good), a tracer (TRACE), a SIGSYS (TRAP), a kill unless made at
    address 0 (its real instruction pointer is what the filter sees), a kill unless 1 << 32 is 0
    (the evaluator shifted by 32; the kernel masks a shift by X to 5 bits: it answered allow, and
    the call killed the process). Its stack pointer in a page of
    a file it maps shared: the call's answer was written there, which allocated the file's page
    (st_blocks 0 -> 8; a page another process shares sees the words); a private writable mapping
    takes the answer now (stopped, as dump has it: a running one's other threads could use that
    mapping meanwhile, so not read). On no mapping: not read (EIO); read now (stopped). Every way:
    the process waits in
    pause(2) as before, at the same address with the same stack pointer; no page of the file; and
    its code as it was: `syscall` was written at its instruction pointer and put back, which left
    that page of libc (or of its program) its own copy (Private_Dirty 4 kB), also where no call
    was sent; the call runs from the `syscall` it waits in now, nothing of its code written."""
    import signal
    import subprocess
    from engine import pdeathsig
    shared = tmp_path / "shared"
    p = subprocess.Popen([hostile_bin, how, str(shared)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        before = _syscall_line(p.pid)
        dirty = enginecase.private_dirty(p.pid, int(before.split()[-1], 16))
        if stop:
            os.kill(p.pid, signal.SIGSTOP)
            _syscall_line(p.pid, "T")
        assert pdeathsig.read(p.pid) == (want if stop or how not in ("shared-stack", "no-stack") else None)
        if stop:
            assert _syscall_line(p.pid, "T") == before and _state(p.pid) == "T"   # (back in its stop)
            os.kill(p.pid, signal.SIGCONT)
        assert p.poll() is None and _syscall_line(p.pid) == before
        assert enginecase.private_dirty(p.pid, int(before.split()[-1], 16)) == dirty
        if how == "shared-stack":
            assert os.stat(shared).st_blocks == 0
    finally:
        p.kill()
        p.wait()


_VFORK_C = r"""
static long sys(long nr, long a, long b) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    sys(157, 15, (long)"mntcr-hold");   /* PR_SET_NAME: ready */
    sys(58, 0, 0);                      /* vfork: the child never execs, its parent waits in D for good */
    for (;;)
        sys(34, 0, 0);                  /* pause */
}
"""


def test_a_vfork_parent_is_refused_and_the_tree_runs_on(case, hostile_bin, tmp_path):
    """A parent in vfork whose child never execs (an uninterruptible wait: no stop, no interrupt
    ends it): refused in one line naming why (no call can be run in it), the child
    (which shares its memory) given no call, both left as they were, the child running."""
    import base64
    import subprocess
    from zdtm.snapshot import tree_pids
    (tmp_path / "vf.c").write_text(_VFORK_C)
    subprocess.run(["gcc", "-O1", "-nostdlib", "-static", "-o", str(tmp_path / "vf"), str(tmp_path / "vf.c")],
                   check=True)
    blob = base64.b64encode((tmp_path / "vf").read_bytes()).decode()
    pid = case.start(f"echo {blob} | base64 -d > /run/vf; chmod 755 /run/vf; exec /run/vf </dev/null >/dev/null 2>&1")
    pids = tree_pids(pid)
    deadline = time.monotonic() + 60   # (the child may not have reached its wait yet)
    while [_state(p) for p in pids] != ["D", "S"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [_state(p) for p in pids] == ["D", "S"]
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    # (refused before the stop since session 27: engine/prestop.py asks for a vfork wait first)
    assert re.search(r"process \d+ is in an uninterruptible wait: a vfork parent waits there until its child "
                     r"execs or exits, and no call can be run in it \(dump reads its state with calls\); dump "
                     r"again once it has left it$", str(err.value).strip()), err.value
    assert tree_pids(pid) == pids and [_state(p) for p in pids] == ["D", "S"]


def test_a_thread_traced_by_another_is_refused_and_runs_on(case):
    """A thread (not the leader) of a process of the tree seized by a tracer outside it: the dump
    looked at the leader's TracerPid alone and succeeded (the tracer's hold lost at restore; it
    could run the thread while dump ran calls in the leader). Refused before the stop now, naming
    the thread and its tracer; the tree keeps running, the tracer keeps its thread."""
    import ctypes
    body = ("import threading, signal\n"
            "threading.Thread(target=lambda: [signal.pause() for _ in iter(int, 1)], daemon=True).start()\n")
    pid = case.start(enginecase.py_hold(body))
    tid = next(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.ptrace(0x4206, tid, None, None) == 0, ctypes.get_errno()   # (PTRACE_SEIZE)
    try:
        with pytest.raises(CRError) as err:
            case.dump(pid, case.new_images_dir(), ("--leave-running",))
        assert re.search(rf"thread {tid} of process {pid} \(mntcr-hold\) is traced by process {os.getpid()} "
                         r"\(\S+\): ptrace is not restored; detach the tracer and dump again; the tree keeps running$",
                         str(err.value).strip()), err.value
        assert _state(pid) == "S"
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            assert f"TracerPid:\t{os.getpid()}\n" in f.read()
    finally:
        # (a detach takes a tracee in a stop: interrupt it first, else it stays ours, and killed
        # with its tree it would wait for us to reap it)
        libc.ptrace(0x4207, tid, None, None)   # (PTRACE_INTERRUPT)
        os.waitpid(tid, 0x40000000)            # (__WALL)
        libc.ptrace(17, tid, None, None)       # (PTRACE_DETACH)


# --- fuzz: session 20's fields mutated at random --------------------------------------------------

def _surface(doc) -> list[tuple]:
    """The places of session 20's fields in the image (paths into it): each process's blocked
    signals, subreaper flag, parent-death signal, THP bit; the UTS names; the superblocks' empty
    roots; the System V queues' msg_qbytes and segments' locks."""
    from test_hardening_images import _nodes

    def dicts(v):
        return v if isinstance(v, dict) else {}

    def items(v):
        return enumerate(v) if isinstance(v, list) else ()
    roots = [(k,) for k in ("hostnames", "domainnames") if k in doc]
    roots += [("superblocks", s, "empty_roots") for s, sb in dicts(doc.get("superblocks")).items()
              if "empty_roots" in dicts(sb)]
    for ns, objs in dicts(doc.get("sysvipc")).items():
        for kind, key in (("msg", "qbytes"), ("shm", "locked"), ("shm", "size")):
            roots += [("sysvipc", ns, kind, i, key) for i, o in items(dicts(objs).get(kind)) if key in dicts(o)]
    for i, p in items(doc.get("processes")):
        roots += [("processes", i, k) for k in ("sig_blocked", "child_subreaper", "pdeathsig", "thp_disable",
                                                  "sig_ignored") if k in dicts(p)]
    out = []
    for root in roots:
        out += [root + path for path, _ in _nodes(enginecase.at(doc, root))]
    return out


def _fuzz_base(image_dir: str, tmp: str) -> tuple[str, dict]:
    """A copy of the image whose root also ignores a signal (the dump has none ignored) and its
    manifest."""
    work = enginecase.copy_image(image_dir, tmp)
    doc = load_manifest(work)
    _parent(doc)["sig_ignored"] = 1 << 12
    return work, doc


def _outcome_host_unchanged(work: str, doc: dict, tmp: str) -> None:
    """Restore `work` (test_hardening_images.restore_outcome: one line or success, no leak), the
    host's UTS names, ipc namespace and our own signal mask and subreaper flag untouched."""
    import ctypes
    import socket
    from test_hardening_images import restore_outcome
    from test_hardening_s19 import _host_ipc
    enginecase.save_manifest(work, doc)
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)

    def ours():
        libc.prctl(37, ctypes.byref(flag), 0, 0, 0)   # (PR_GET_CHILD_SUBREAPER)
        return socket.gethostname(), _domainname("self"), _status("self", "SigBlk"), flag.value, _host_ipc()
    before = ours()
    code, err = restore_outcome(work, list(enginecase.RESTORE_EXTERNALS), tmp)
    event("restored" if code == 0 else "refused: " + re.sub(r"\d+", "N", err.split(":")[1].strip())[:40])
    after = ours()
    assert after[:4] == before[:4] and after[4] <= before[4], (before, after)


_EXAMPLES = int(os.environ.get("MNTCR_S21_EXAMPLES") or 0)


@settings(max_examples=_EXAMPLES or 12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(muts=_MUTATIONS)
def test_fuzz_session_20_fields(image_dir, muts):
    """Random changes (hostile values, deletions, duplicates) of session 20's fields: restore
    refuses in one line (exit 2, no traceback) or restores (the tree is then killed); never a
    leak, never a change of the host's UTS names or ipc namespace, nor of our mask or flag."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s21-") as tmp:
        work, doc = _fuzz_base(image_dir, tmp)
        enginecase.mutate(doc, muts, _surface)
        try:
            json.dumps(doc).encode()
        except (ValueError, UnicodeEncodeError):
            return   # (not representable as JSON)
        _outcome_host_unchanged(work, doc, tmp)


@settings(max_examples=_EXAMPLES or 10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(-2, 1 << 33), st.binary(max_size=80),
                                  st.booleans()), min_size=1, max_size=4))
def test_fuzz_session_20_values_in_range(image_dir, changes):
    """As above with values of the field's own type (near its old one, or any; a string of random
    bytes, as text or as surrogates), so that more images pass the validator and reach what
    restore makes of them: masks, signals, names, empty roots' modes and owners, qbytes."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s21-") as tmp:
        work, doc = _fuzz_base(image_dir, tmp)
        enginecase.mutate_in_range(doc, changes, _surface, _in_range)
        _outcome_host_unchanged(work, doc, tmp)


# --- fuzz: the seccomp evaluator against the kernel (engine/seccomp_eval.py) ----------------------

_GETPID = 39
_RUN_FILTER = """
import ctypes, os, struct, sys
prog = bytes.fromhex(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(prog)
libc.prctl(38, 1, 0, 0, 0)
if libc.prctl(22, 2, ctypes.c_char_p(struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))), 0, 0):
    os.write(1, b"refused")
    os._exit(0)
got = libc.syscall(39, 0, 0, 0, 0, 0, 0)
os.write(1, b"%d %d" % (got, ctypes.get_errno()))
os._exit(0)
"""

_ACTIONS = [0x7FFF0000, 0x7FFC0000, 0x00050005, 0x00050000 | 4095, 0x80000000, 0, 0x00030000, 0x7FF00000]


@st.composite
def _programs(draw):
    """A classic BPF program of seccomp's opcodes (loads of seccomp_data but its instruction
    pointer, which the evaluator cannot know here), behind a prefix that lets every call but
    getpid through."""
    n = draw(st.integers(1, 12))
    body = []
    for i in range(n):
        left = n - i - 1   # (instructions after this one: jumps stay inside)
        kind = draw(st.sampled_from(["ld", "ldx", "alu", "alux", "jmp", "misc", "mem", "ret", "shift"]))
        k = draw(st.one_of(st.sampled_from([0, 1, 2, 5, 31, 32, 33, 39, 0x80000000, 0xFFFFFFFF, *_ACTIONS]),
                           st.integers(0, 0xFFFFFFFF)))
        if kind == "shift":   # (X set, then a shift by it: where the evaluator once differed)
            body += [(0x01, 0, 0, draw(st.sampled_from([31, 32, 33, 64]))), (draw(st.sampled_from([0x6C, 0x7C])), 0, 0, 0)]
        elif kind == "ld":
            body.append(draw(st.sampled_from([(0x20, 0, 0, draw(st.sampled_from([0, 4, *range(16, 64, 4)]))),
                                              (0x00, 0, 0, k), (0x80, 0, 0, 0)])))
        elif kind == "ldx":
            body.append(draw(st.sampled_from([(0x01, 0, 0, k), (0x81, 0, 0, 0)])))
        elif kind in ("alu", "alux"):
            op = draw(st.sampled_from([0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0xA0]))
            body.append((0x04 | op | (0x08 if kind == "alux" and op != 0x80 else 0), 0, 0, k))
        elif kind == "jmp" and left:
            op = draw(st.sampled_from([0x00, 0x10, 0x20, 0x30, 0x40]))
            jt, jf = draw(st.integers(0, min(left - 1, 255))), draw(st.integers(0, min(left - 1, 255)))
            body.append((0x05 | op | draw(st.sampled_from([0, 0x08])) * (op != 0), jt, jf,
                         draw(st.integers(0, left - 1)) if op == 0 else k))
        elif kind == "misc":
            body.append((draw(st.sampled_from([0x07, 0x87])), 0, 0, 0))
        elif kind == "mem":
            body.append((draw(st.sampled_from([0x02, 0x03, 0x60, 0x61])), 0, 0, draw(st.integers(0, 15))))
        else:
            body.append(draw(st.sampled_from([(0x06, 0, 0, draw(st.sampled_from(_ACTIONS))), (0x16, 0, 0, 0)])))
    body.append(draw(st.sampled_from([(0x06, 0, 0, draw(st.sampled_from(_ACTIONS))), (0x16, 0, 0, 0)])))
    prefix = [(0x20, 0, 0, 0), (0x15, 1, 0, _GETPID), (0x06, 0, 0, 0x7FFF0000)]
    return b"".join(struct.pack("=HBBI", *i) for i in prefix + body).hex()


def _kernel_answer(prog: str) -> str | None:
    """What the kernel made of getpid() under `prog`: "allow", "errno N", "sigsys"; None when it
    did not load it."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-S", "-c", _RUN_FILTER, prog], capture_output=True, timeout=30)
    if r.returncode == -31:
        return "sigsys"
    assert r.returncode == 0, r
    if r.stdout == b"refused":
        return None
    got, err = (int(v) for v in r.stdout.split())
    return "allow" if got > 0 else f"errno {err}"


def _evaluator_answer(prog: str) -> str:
    """The same as engine/seccomp_eval.py tells it (a program it cannot run: the kernel's answer to
    a division by 0, return 0: a kill)."""
    from engine import seccomp_eval as ev
    try:
        ret = ev.answer([{"insns": prog}], ev.AUDIT_ARCH_X86_64, _GETPID, (0,) * 6)
    except ev.EvalError:
        return "sigsys"
    action = ret & 0xFFFF0000
    if ev.allows(ret):
        return "allow"
    if action == ev.RET_ERRNO:
        return f"errno {min(ret & 0xFFFF, 4095)}"
    return "errno 38" if action == 0x7FF00000 else "sigsys"   # (TRACE with no tracer: ENOSYS)



def _prog(*insns) -> str:
    prefix = [(0x20, 0, 0, 0), (0x15, 1, 0, _GETPID), (0x06, 0, 0, 0x7FFF0000)]
    return b"".join(struct.pack("=HBBI", *i) for i in prefix + list(insns)).hex()


@settings(max_examples=_EXAMPLES or 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=_programs())
# (1 << X, X = 32, compared with 0: the kernel kills, the evaluator said allow; and the other way)
@example(prog=_prog((0x00, 0, 0, 1), (0x01, 0, 0, 32), (0x6C, 0, 0, 0), (0x15, 0, 1, 0), (0x06, 0, 0, 0x7FFF0000),
                    (0x06, 0, 0, 0x80000000)))
@example(prog=_prog((0x00, 0, 0, 0x7FFF0000), (0x01, 0, 0, 32), (0x6C, 0, 0, 0), (0x16, 0, 0, 0)))
def test_fuzz_the_evaluator_answers_what_the_kernel_does(prog):
    """Random seccomp programs installed in a child that then calls getpid(): the evaluator dump
    trusts before it runs a call inside a process (and restore's check of early filters) answers
    what the kernel did, never "allow" where the kernel killed, trapped or failed the call. (It
    found the shift by 32.)"""
    got = _kernel_answer(prog)
    event("kernel refused" if got is None else got.split()[0])
    if got is not None:
        assert _evaluator_answer(prog) == got


def test_qbytes_past_the_hosts_msgmnb_stays_in_the_trees_namespace(image_dir, tmp_path):
    """A queue's msg_qbytes at its highest (2^31 - 1, far past any msgmnb): restore raises msgmnb
    to set it in the tree's own ipc namespace; the host's msgmnb and msgmax are unchanged."""
    import subprocess
    limits = ("/proc/sys/kernel/msgmnb", "/proc/sys/kernel/msgmax")
    ours = [open(f).read() for f in limits]
    pid = _restored(_mutated(image_dir, tmp_path, lambda d: _ipc(d)["msg"][0].update(qbytes=(1 << 31) - 1)),
                    tmp_path)
    try:
        code = ("import ctypes; l = ctypes.CDLL(None); b = ctypes.create_string_buffer(512)\n"
                "assert l.msgctl(l.msgget(0x71, 0), 2, b) == 0; print(ctypes.c_ulong.from_buffer(b, 88).value)")
        out = subprocess.run(["nsenter", "-t", str(pid), "-i", "python3", "-c", code], capture_output=True,
                             text=True, check=True).stdout
        assert out.split() == [str((1 << 31) - 1)]
    finally:
        _kill(pid)
    assert [open(f).read() for f in limits] == ours


def _in_range(old, number: int, raw: bytes, near: bool):
    """A flag (flipped or any), a number (moved up by up to two, or any), bytes as text or as surrogates."""
    if type(old) is bool:
        return not old if near else number % 2 == 0
    if type(old) is int:
        return old + number % 3 if near else number
    return raw.decode("utf-8", "surrogateescape") if near else raw.decode("latin-1")
