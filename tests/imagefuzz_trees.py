"""The trees zdtm/imagefuzz.py dumps and mutates (`python3 -m zdtm.imagefuzz build DIR`), as
tests/enginecase.py setups: between them every kind of record a hostile image would aim at."""

from __future__ import annotations

from enginecase import IPC_LIBC, py_hold
from test_hardening_s13 import SETUP as USERNS   # a child in a user namespace, unix listeners, a pipe

# tmpfs contents (a file, a symlink, a FIFO), a bind of a subdirectory, a shared group and a
# slave, an overmount, an fd and a cwd
BASIC = """
mount -t tmpfs t /mnt
mkdir -p /mnt/a/d /mnt/b /mnt/s /mnt/o
echo data > /mnt/a/d/f
ln -s d/f /mnt/a/l
mkfifo /mnt/a/p
mount --make-shared /mnt
mount --bind /mnt/a /mnt/b
mount --bind /mnt/a /mnt/s
mount --make-slave /mnt/s
mount -t tmpfs o1 /mnt/o
mount -t tmpfs o2 /mnt/o
exec 5</mnt/a/d/f
cd /mnt/a/d
hold
"""

# an overlay of tmpfs layers, a file open on it
OVERLAY = """
mount -t tmpfs t /mnt
mkdir -p /mnt/l1 /mnt/l2 /mnt/u /mnt/w /mnt/m
echo low > /mnt/l1/f; echo mid > /mnt/l2/g
mount -t overlay ov -o lowerdir=/mnt/l2:/mnt/l1,upperdir=/mnt/u,workdir=/mnt/w /mnt/m
echo up > /mnt/m/h
exec 6</mnt/m/f
hold
"""

# detached mounts: a cwd and an fd on lazily unmounted tmpfs
LAZY = """
mkdir -p /mnt/vol /mnt/data /mnt/view
mount -t tmpfs vol /mnt/vol
mkdir -p /mnt/vol/dir; echo parent > /mnt/vol/dir/f
mount -t tmpfs data /mnt/data
mkdir -p /mnt/data/sub; echo x > /mnt/data/sub/f
mount --bind /mnt/data/sub /mnt/view
exec 7</mnt/view/f
umount -l /mnt/view
cd /mnt/vol/dir
umount -l /mnt/vol
hold
"""

# pipes, a socketpair with queued data, a listener with a pending client, a child process
FDS = "mount -t tmpfs t /run\n" + py_hold("""
import socket
r, w = os.pipe(); os.write(w, b"queued"); os.dup2(r, 10); os.dup2(w, 11); os.close(r); os.close(w)
a, b = socket.socketpair(); a.send(b"hello"); os.dup2(a.fileno(), 12); os.dup2(b.fileno(), 13)
ls = socket.socket(socket.AF_UNIX); ls.bind("/run/l.sock"); ls.listen(4); os.dup2(ls.fileno(), 14)
f = os.open("/run/data", os.O_RDWR | os.O_CREAT, 0o600); os.write(f, b"abc"); os.dup2(f, 15)
if os.fork() == 0:
    import ctypes, signal
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
""")

# unix sockets with fds in flight (a pipe end and a file sent and not received), a listener's
# pending connection with bytes sent, an abstract datagram socket
INFLIGHT = "mount -t tmpfs t /run\n" + py_hold("""
import socket
a, b = socket.socketpair(); os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
r, w = os.pipe(); os.write(w, b"queued")
f = os.open("/run/data", os.O_RDWR | os.O_CREAT, 0o600); os.write(f, b"abc")
socket.send_fds(a, [b"fds"], [r, f])
os.close(r); os.close(f); os.dup2(w, 12); os.close(w)
ls = socket.socket(socket.AF_UNIX); ls.bind("/run/l.sock"); ls.listen(4); os.dup2(ls.fileno(), 13)
c = socket.socket(socket.AF_UNIX); c.connect("/run/l.sock"); c.send(b"pending")
os.dup2(c.fileno(), 14)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind(b"\\0mntcr-fuzz"); os.dup2(d.fileno(), 15)
""")

# System V IPC: a shared memory segment attached twice (once read-only), one never attached, a
# message queue with a message, a semaphore set
SYSVIPC = py_hold("""
import ctypes
""" + IPC_LIBC + """a = ok(libc.shmget(0x1111, 8192, 0o1600)); ok(libc.shmget(0x2222, 4096, 0o1600))
kept = [ok(libc.shmat(a, None, 0)), ok(libc.shmat(a, None, 0o10000))]
ctypes.memmove(kept[0], b"data", 4)
q = ok(libc.msgget(0x3333, 0o1600))
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 8)]
ok(libc.msgsnd(q, ctypes.byref(Msg(1, b"hello")), 8, 0))
ok(libc.semget(0x4444, 3, 0o1600))
""")

TREES = {"basic": BASIC, "overlay": OVERLAY, "lazy_umount": LAZY, "fds": FDS, "userns": USERNS,
         "inflight": INFLIGHT, "sysvipc": SYSVIPC}
