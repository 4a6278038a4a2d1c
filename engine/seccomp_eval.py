"""What a process's seccomp filters answer to one system call, found by running their classic BPF
here (no call made): before dump runs a call inside a process (engine/inject.py), so that a
filter that kills, traps or fails it is never met (the process would die or see a signal).

Only the instructions seccomp accepts are run (linux kernel/seccomp.c seccomp_check_filter);
anything else answers None (unknown), as does a jump out of the program.
"""

from __future__ import annotations

import struct

AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW, RET_LOG = 0x7FFF0000, 0x7FFC0000
_ACTION_FULL = 0xFFFF0000
_M32 = 0xFFFFFFFF


def _data(nr: int, args: tuple, ip: int) -> bytes:
    """struct seccomp_data of the call (x86-64)."""
    full = (list(args) + [0] * 6)[:6]
    return struct.pack("=iIQ6Q", nr, AUDIT_ARCH_X86_64, ip, *(a & (1 << 64) - 1 for a in full))


def _alu(op: int, a: int, v: int) -> int | None:
    ops = {0x00: lambda: a + v, 0x10: lambda: a - v, 0x20: lambda: a * v,
           0x30: lambda: a // v if v else None, 0x40: lambda: a | v, 0x50: lambda: a & v,
           0x60: lambda: a << v if v < 32 else 0, 0x70: lambda: a >> v if v < 32 else 0,
           0x80: lambda: -a, 0x90: lambda: a % v if v else None, 0xA0: lambda: a ^ v}
    got = ops[op]() if op in ops else None
    return None if got is None else got & _M32


def run(insns: bytes, nr: int, args: tuple, ip: int) -> int | None:
    """The 32-bit answer of one classic BPF seccomp program (`insns`, 8 bytes each) to the call,
    or None when it cannot be told here."""
    data = _data(nr, args, ip)
    prog = [struct.unpack("=HBBI", insns[i:i + 8]) for i in range(0, len(insns) - 7, 8)]
    a = x = pc = 0
    mem = [0] * 16
    while 0 <= pc < len(prog):
        code, jt, jf, k = prog[pc]
        cls = code & 0x07
        pc += 1
        if code == 0x20:                          # ld [k] (word)
            if k % 4 or k + 4 > len(data):
                return None
            a = struct.unpack_from("=I", data, k)[0]
        elif code in (0x00, 0x01):                # ld/ldx #k
            a, x = (k, x) if code == 0x00 else (a, k)
        elif code == 0x80 or code == 0x81:        # ld/ldx #len
            a, x = (len(data), x) if code == 0x80 else (a, len(data))
        elif code in (0x60, 0x61) and k < 16:     # ld/ldx M[k]
            a, x = (mem[k], x) if code == 0x60 else (a, mem[k])
        elif code in (0x02, 0x03) and k < 16:     # st/stx M[k]
            mem[k] = a if code == 0x02 else x
        elif code == 0x07:                        # tax
            x = a
        elif code == 0x87:                        # txa
            a = x
        elif cls == 0x04:                         # alu
            v = x if code & 0x08 else k
            a = _alu(code & 0xF0, a, v)
            if a is None:
                return None
        elif code == 0x05:                        # ja
            pc += k
        elif cls == 0x05:                         # jeq, jgt, jge, jset
            v = x if code & 0x08 else k
            test = {0x10: a == v, 0x20: a > v, 0x30: a >= v, 0x40: bool(a & v)}.get(code & 0xF0)
            if test is None:
                return None
            pc += jt if test else jf
        elif code == 0x06:                        # ret #k
            return k
        elif code == 0x16:                        # ret a
            return a
        else:
            return None
    return None


def allows(filters: list[dict], nr: int, args: tuple, ip: int) -> bool:
    """Whether every filter (as engine/seccomp.py reads them: {"insns": hex}) lets the call run
    (ALLOW or LOG); False when one does not, or cannot be told."""
    for f in filters:
        got = run(bytes.fromhex(f["insns"]), nr, args, ip)
        if got is None or got & _ACTION_FULL not in (RET_ALLOW, RET_LOG):
            return False
    return True
