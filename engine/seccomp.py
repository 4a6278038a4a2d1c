"""Seccomp filters (SECCOMP_MODE_FILTER): podman's and docker's default profiles, systemd's
SystemCallFilter=, `bwrap --seccomp`, a browser's sandbox. A stand-in that lacked them gave the
restored container every system call its runtime had denied.

Dump reads each process's filters with ptrace (PTRACE_SECCOMP_GET_FILTER and _GET_METADATA, the
only interface that shows them: the tree is stopped, each process is seized, read and let go
in its stop); the image keeps them oldest first, with the LOG flag. Restore installs them in
each stand-in as its very last step, on every thread (`late`: with no_new_privs or CAP_SYS_ADMIN
kept, as a systemd service's; its own steps before then are what a filter may deny, such as the
executable mapping MemoryDenyWriteExecute forbids); else before it takes its ids, once it joined
its user namespace (installing needs CAP_SYS_ADMIN there, which the ids drop; joining is what a
container's filter denies): its ids, capabilities and threads are then taken under them, as the
runtime took them, and a filter that denies one fails the restore.

An image's filters run on its stand-ins alone. The validator refuses a program the kernel would
not take (`check_program`), before anything is made; a filter that denies what its stand-in does
after installing it (answering the restorer, its last word) fails the restore within
ANSWER_TIMEOUT, the stand-in killed with the tree (restore.py).

Refused: strict mode (SECCOMP_MODE_STRICT: nothing but read, write, exit and sigreturn, which
a stand-in cannot be made under), a filter that hands system calls to a supervisor
(SECCOMP_RET_USER_NOTIF: its listener is another process's, a runtime's seccomp agent) and early
filters that deny a call the stand-in makes after them (engine/seccomp_eval.py), all before the
tree is stopped. Only ptrace shows a filter, and only in a traced stop: `precheck_filters` holds
each process with filters alone in a brief trap (PTRACE_SEIZE, PTRACE_INTERRUPT, the read,
PTRACE_DETACH: no signal is sent, its parent and a SIGCONT watcher see nothing; a blocking call it
was in restarts, or returns EINTR as after any stop) while the tree runs. A filter added between
that check and the stop is refused once the tree is stopped, the tree then resumed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from engine import kernel

MODE_FILTER = 2
_PTRACE_DETACH, _PTRACE_SEIZE, _PTRACE_INTERRUPT = 17, 0x4206, 0x4207
_GET_FILTER, _GET_METADATA = 0x420C, 0x420D
_WALL = 0x40000000
FLAG_LOG = 2
_RET_USER_NOTIF = 0x7FC00000
ANSWER_TIMEOUT = 60       # seconds the restorer waits for a stand-in that runs under its filters
MAX_FILTERS = 512         # (the kernel's cap is 32768 instructions over the whole chain)
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277, "arm64": 277}[os.uname().machine]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class SeccompError(OSError):
    """Filters restore could not give back (a one-line reason)."""


def mode(pid: int, status: dict[str, str] | None = None) -> int:
    """`pid`'s seccomp mode (0 none, 1 strict, 2 filter; /proc/PID/status Seccomp); from `status`
    (kernel.read_process_status's, of the stopped process) when given."""
    got = (kernel.proc_status(pid, {"Seccomp"}) if status is None else status).get("Seccomp")
    return int(got) if got else 0


def _strict(pid: int) -> SeccompError:
    return SeccompError(errno.EOPNOTSUPP, f"process {pid} runs in seccomp strict mode, which is not restored")


def precheck(pids: list[int]) -> None:
    """Refuse strict mode on the running tree, and filters ptrace may not read here (Yama's
    ptrace_scope 3: no process may attach); the filters are read once the tree is stopped."""
    for pid in pids:
        try:
            m = mode(pid)
        except FileNotFoundError:
            continue   # (gone meanwhile: dump tells)
        if m == 1:
            raise _strict(pid)
        if m == MODE_FILTER and _yama_scope() == 3:
            raise SeccompError(errno.EPERM, f"process {pid} has seccomp filters, which only ptrace reads, and "
                                            "kernel.yama.ptrace_scope is 3 (no attach): not restored")


def precheck_filters(pids: list[int]) -> dict[int, list[dict] | None]:
    """Before the tree is stopped: read the filters of each process that has some (`read`, a brief
    trap of that process alone) and refuse those restore would not give back (SECCOMP_RET_USER_NOTIF,
    `standin_refusal`). The filters read, by pid (engine/subreaper.py `precheck` asks them again)."""
    out: dict[int, list[dict] | None] = {}
    for pid in pids:
        try:
            status = kernel.proc_status(pid, {"Seccomp", "TracerPid"})
            if status.get("Seccomp", "0").strip() != str(MODE_FILTER) or status.get("TracerPid", "0").strip() != "0":
                continue   # (a traced one: refused next, as traced, by dump: engine/freeze.py)
            entry = {"caps": kernel.read_caps(pid), **kernel.read_fs_bits(pid)}
        except FileNotFoundError:
            continue   # (gone meanwhile: dump tells)
        filters = out[pid] = read(pid)
        why = standin_refusal(pid, dict(entry, seccomp=filters)) if filters else None
        if why:
            raise SeccompError(errno.EOPNOTSUPP, why)
    return out


def standin_refusal(pid: int, entry: dict) -> str | None:
    """Why the filters of process record `entry` ("seccomp", "caps", "no_new_privs") would stop its
    stand-in: ones it must install before its ids (`late`) that deny a call it makes after them
    (engine/seccomp_eval.py); None when they would not (or cannot be run here: left to restore)."""
    from engine import seccomp_eval
    if late(entry):
        return None
    try:
        name = seccomp_eval.denied_standin_call(entry["seccomp"], os.uname().machine)
    except seccomp_eval.EvalError:
        return None
    return None if not name else (
        f"process {pid}: its seccomp filters deny {name}(2), which its stand-in makes after installing them "
        "(it may not install them after its ids: no no_new_privs, no CAP_SYS_ADMIN): not restored")


def _yama_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _ptrace(req: int, pid: int, addr, data) -> int:
    ret = _libc.ptrace(req, pid, addr, data)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace {req:#x}: {os.strerror(e)}")
    return ret


def read(pid: int, status: dict[str, str] | None = None) -> list[dict] | None:
    """The filters of stopped process `pid`, oldest first ([{"insns": hex, "log": bool}]), None
    without any (`status`: as `mode`'s)."""
    m = mode(pid, status)
    if m == 0:
        return None
    if m != MODE_FILTER:
        raise _strict(pid)
    try:
        _ptrace(_PTRACE_SEIZE, pid, None, None)
    except OSError as e:
        raise SeccompError(e.errno or errno.EPERM, f"process {pid}: its seccomp filters cannot be read "
                                                   f"({e.strerror}): dump as root, with CAP_SYS_PTRACE") from None
    try:
        return _read_seized(pid)
    except SeccompError:
        raise
    except OSError as e:
        raise SeccompError(e.errno or errno.EIO, f"process {pid}: its seccomp filters cannot be read "
                                                 f"({e.strerror or e})") from None
    finally:
        _libc.ptrace(_PTRACE_DETACH, pid, None, None)   # (back in its stop: the dump's SIGSTOP)


def _read_seized(pid: int) -> list[dict]:
    """The filters of `pid`, which we hold seized (read)."""
    _ptrace(_PTRACE_INTERRUPT, pid, None, None)
    os.waitpid(pid, _WALL)   # (its trap stop: the one a stopped process enters at once)
    out = []
    for i in range(MAX_FILTERS + 1):
        n = _libc.ptrace(_GET_FILTER, pid, ctypes.c_void_p(i), None)
        if n < 0 and ctypes.get_errno() == errno.ENOENT:
            break
        if n < 0:
            raise OSError(ctypes.get_errno(), f"filter {i}: {os.strerror(ctypes.get_errno())}")
        if i == MAX_FILTERS:
            raise SeccompError(errno.E2BIG, f"process {pid} has more than {MAX_FILTERS} seccomp filters")
        buf = ctypes.create_string_buffer(8 * n)
        _ptrace(_GET_FILTER, pid, ctypes.c_void_p(i), buf)
        meta = ctypes.create_string_buffer(struct.pack("=QQ", i, 0))
        _ptrace(_GET_METADATA, pid, ctypes.c_void_p(16), meta)
        insns = buf.raw
        if _notifies(insns):
            raise SeccompError(errno.EOPNOTSUPP, f"process {pid} has a seccomp filter that hands system calls "
                                                 "to a supervisor (SECCOMP_RET_USER_NOTIF), which is not restored")
        out.append({"insns": insns.hex(), "log": bool(struct.unpack("=QQ", meta.raw[:16])[1] & FLAG_LOG)})
    return out


def _notifies(insns: bytes) -> bool:
    """Whether a classic BPF program returns SECCOMP_RET_USER_NOTIF anywhere (BPF_RET | BPF_K)."""
    return any(code == 0x06 and k & 0xFFFF0000 == _RET_USER_NOTIF
               for code, _jt, _jf, k in struct.iter_unpack("=HBBI", insns))


# Classic BPF opcodes a seccomp filter may hold (the kernel's seccomp_check_filter; any other is
# EINVAL): loads (of seccomp_data words, of its length, immediates, scratch memory), stores, ALU
# with K or X, TAX/TXA, jumps and returns.
_ALU_OPS = (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xa0)   # add sub mul div or and lsh rsh xor (no mod)
_CODES = ({0x20, 0x80, 0x81, 0x00, 0x01, 0x60, 0x61, 0x02, 0x03, 0x06, 0x16, 0x07, 0x87, 0x84, 0x05}
          | {0x04 | op | src for op in _ALU_OPS for src in (0, 8)}
          | {0x05 | op | src for op in (0x10, 0x20, 0x30, 0x40) for src in (0, 8)})
_SECCOMP_DATA = 64   # sizeof(struct seccomp_data): what BPF_LD|BPF_W|BPF_ABS reads


def check_program(insns: bytes) -> str | None:
    """Why the kernel would refuse classic BPF program `insns` as a seccomp filter (seccomp(2)
    EINVAL), or None: an opcode it does not take, a load outside seccomp_data or unaligned, a
    scratch cell past 15, a division by constant 0, a shift by 32 or more, a jump past the end, no
    return at the end. (Not checked here: a scratch cell read before it is written; the kernel
    refuses that one at restore.)"""
    n = len(insns) // 8
    for pc, (code, jt, jf, k) in enumerate(struct.iter_unpack("=HBBI", insns)):
        if code not in _CODES:
            return f"instruction {pc}: opcode {code:#x} is none a seccomp filter may hold"
        if code == 0x20 and (k >= _SECCOMP_DATA or k % 4):
            return f"instruction {pc}: a load at offset {k}, outside seccomp_data or unaligned"
        if code in (0x60, 0x61, 0x02, 0x03) and k >= 16:
            return f"instruction {pc}: scratch memory cell {k} (there are 16)"
        if code == 0x34 and k == 0:
            return f"instruction {pc}: a division by 0"
        if code in (0x64, 0x74) and k >= 32:
            return f"instruction {pc}: a shift by {k}"
        if code == 0x05 and k >= n - pc - 1:
            return f"instruction {pc}: a jump past the end"
        if code & 0x07 == 0x05 and code != 0x05 and max(jt, jf) >= n - pc - 1:
            return f"instruction {pc}: a jump past the end"
    if n == 0 or insns[-8] & 0x07 != 0x06:
        return "its last instruction is no return"
    return None


def _programs(filters: list[dict]) -> list[tuple]:
    """(flags, sock_fprog buffer, instructions buffer) per filter, oldest first: the arguments
    of seccomp(SECCOMP_SET_MODE_FILTER, flags, &fprog)."""
    out = []
    for f in filters:
        insns = bytes.fromhex(f["insns"])
        body = ctypes.create_string_buffer(insns, len(insns))
        prog = ctypes.create_string_buffer(struct.pack("=HxxxxxxQ", len(insns) // 8, ctypes.addressof(body)), 16)
        out.append((FLAG_LOG if f["log"] else 0, prog, body))
    return out


FLAG_TSYNC = 1


def install(filters: list[dict], tsync: bool = False) -> None:
    """Install `filters` on ourselves, oldest first (`tsync`: on every thread of ours too)."""
    for flags, prog, _body in _programs(filters):
        if _libc.syscall(_NR_SECCOMP, 1, flags | (FLAG_TSYNC if tsync else 0), prog) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"its seccomp filter: {os.strerror(e)}")


def steps(filters: list[dict], keep: list) -> list[tuple]:
    """The seccomp(2) calls of `install` with TSYNC as lastword.ENTRY tuples (engine/mappings.py's
    last steps, after the threads); `keep` holds the buffers they point at."""
    out = []
    for flags, prog, body in _programs(filters):
        keep += [prog, body]
        out.append((_NR_SECCOMP, 1, flags | FLAG_TSYNC, ctypes.addressof(prog), 0, 0, 0, 1, 0))
    return out


def late(p: dict) -> bool:
    """Whether process record `p`'s stand-in installs its filters as its very last step (after
    its ids, capabilities and threads: what a filter denies, MemoryDenyWriteExecute's executable
    mappings, never stops a step of ours), which needs no_new_privs or CAP_SYS_ADMIN kept (21);
    else before it takes its ids, while it still may (a runtime's without no_new_privs)."""
    caps = p.get("caps")
    return bool(p.get("no_new_privs")) or caps is None or bool(caps["eff"] >> 21 & 1)
