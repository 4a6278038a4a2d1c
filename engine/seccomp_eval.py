"""What a chain of seccomp filters answers a system call: classic BPF run here over seccomp_data.

Two users: restore's stand-ins, below, and dump's calls run inside a stopped process
(engine/inject.py), never sent where a filter would kill, trap or fail them (`call_allowed`).

A stand-in installs its process's filters before it takes its ids when it may not after them
(engine/seccomp.py `late`: no no_new_privs, no CAP_SYS_ADMIN kept): the calls it makes after that
(setresuid, capset, prctl...) then meet the filters. Dump asks here what they answer those calls,
so that a chain that would kill the stand-in or fail it is refused before anything is made (CRIU
suspends seccomp under ptrace instead: PTRACE_O_SUSPEND_SECCOMP).
"""

from __future__ import annotations

import struct

AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64 = 0xC000003E, 0xC00000B7
RET_ALLOW, RET_LOG, RET_ERRNO = 0x7FFF0000, 0x7FFC0000, 0x00050000
_ENOSYS = 38
_ACTION_FULL = 0xFFFF0000
_M32 = 0xFFFFFFFF


class EvalError(ValueError):
    """A program this evaluator cannot run (an instruction seccomp would not have loaded)."""


def _load(data: bytes, k: int) -> int:
    if k % 4 or k + 4 > len(data):
        raise EvalError(f"load at {k}")
    return struct.unpack_from("=I", data, k)[0]


# (a shift by X takes its low 5 bits, as the kernel's 32-bit shift does: one by 32 is none; a
# constant one past 31 the kernel does not load)
_ALU = {0x00: lambda a, x: a + x, 0x10: lambda a, x: a - x, 0x20: lambda a, x: a * x,
        0x30: lambda a, x: a // x if x else None, 0x40: lambda a, x: a | x, 0x50: lambda a, x: a & x,
        0x60: lambda a, x: a << (x & 31), 0x70: lambda a, x: a >> (x & 31),
        0x90: lambda a, x: a % x if x else None, 0xA0: lambda a, x: a ^ x}
_JMP = {0x10: lambda a, x: a == x, 0x20: lambda a, x: a > x, 0x30: lambda a, x: a >= x,
        0x40: lambda a, x: bool(a & x)}


def run(insns: bytes, data: bytes) -> int:
    """The 32-bit value program `insns` (8-byte sock_filter instructions) returns for `data`."""
    prog = [struct.unpack_from("=HBBI", insns, i) for i in range(0, len(insns), 8)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    while pc < len(prog):
        code, jt, jf, k = prog[pc]
        pc += 1
        cls, src = code & 0x07, code & 0x08
        if cls == 0x06:                                     # RET
            return (a if code & 0x18 == 0x10 else k) & _M32
        if cls in (0x00, 0x01):                             # LD, LDX: IMM, ABS, MEM, LEN
            mode = code & 0xE0
            if mode not in (0x00, 0x20, 0x60, 0x80):
                raise EvalError(f"load mode {code:#x}")
            val = k if mode == 0x00 else _load(data, k) if mode == 0x20 else mem[k & 15] if mode == 0x60 \
                else len(data)
            if cls == 0x00:
                a = val & _M32
            else:
                x = val & _M32
        elif cls in (0x02, 0x03):                           # ST, STX
            mem[k & 15] = a if cls == 0x02 else x
        elif cls == 0x04:                                   # ALU
            op = code & 0xF0
            if op == 0x80:
                a = -a & _M32
                continue
            got = _ALU.get(op, lambda *_: None)(a, x if src else k)
            if got is None:
                raise EvalError(f"alu {code:#x}")
            a = got & _M32
        elif cls == 0x05:                                   # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
            elif op in _JMP:
                pc += jt if _JMP[op](a, x if src else k) else jf
            else:
                raise EvalError(f"jump {code:#x}")
        elif cls == 0x07:                                   # MISC: TAX, TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise EvalError("ran off the end")


def answer(filters: list[dict], arch: int, nr: int, args=(), ip: int = 0) -> int:
    """What the chain (oldest first, as engine/seccomp.py reads it: {"insns": hex}) answers call
    `nr` with `args` (up to 6, the rest 0): the most restrictive action of all (the kernel's order),
    with its data."""
    args = [v & (1 << 64) - 1 for v in args] + [0] * (6 - len(args))
    data = struct.pack("=iIQ6Q", nr, arch, ip, *args)
    out = RET_ALLOW
    for f in filters:
        got = run(bytes.fromhex(f["insns"]), data)
        # (KILL_PROCESS is 0x80000000: the highest as unsigned, the first as the kernel compares, signed)
        if _rank(got) < _rank(out):
            out = got
    return out


def _rank(ret: int) -> int:
    action = ret & _ACTION_FULL
    return action - (1 << 32) if action & 0x80000000 else action


def call_allowed(filters: list[dict], nr: int, args=(), ip: int = 0) -> bool:
    """Whether every filter lets x86-64 call `nr` with `args` made at `ip` through (ALLOW, LOG);
    False when one does not, or cannot be run here."""
    try:
        return allows(answer(filters, AUDIT_ARCH_X86_64, nr, args, ip))
    except EvalError:
        return False


def allows(ret: int) -> bool:
    """Whether an answer lets the call through (ALLOW, LOG)."""
    return ret & _ACTION_FULL in (RET_ALLOW, RET_LOG)


# The calls a stand-in makes once it installed its filters early, before its ids (x86_64 numbers):
# its ids, capabilities and prctl steps, its limits and umask, its channel's messages, its fds,
# the interpreter's memory and locks, its threads, its last word and its sleep.
STANDIN_CALLS = {"x86_64": {
    "setgroups": 116, "setresgid": 119, "setresuid": 117, "setfsgid": 123, "setfsuid": 122, "capset": 126,
    "prctl": 157, "prlimit64": 302, "umask": 95, "rt_sigaction": 13, "rt_sigprocmask": 14, "close": 3,
    "munmap": 11, "mmap": 9, "read": 0, "write": 1, "recvmsg": 47, "sendmsg": 46, "futex": 202,
    "clone": 56, "clone3": 435, "pause": 34}}


def denied_standin_call(filters: list[dict], machine: str) -> str | None:
    """The name of the first call of STANDIN_CALLS (with arguments 0) the chain does not let
    through; None when it lets them all, or on a machine without that list."""
    calls = STANDIN_CALLS.get(machine)
    if calls is None:
        return None
    for name, nr in calls.items():
        got = answer(filters, AUDIT_ARCH_X86_64, nr)
        # (clone3 failing with ENOSYS, as Docker's and podman's default profiles make it, is met by
        # glibc's fall back to clone, which is in the list too)
        if not allows(got) and not (name == "clone3" and got == RET_ERRNO | _ENOSYS):
            return name
    return None
