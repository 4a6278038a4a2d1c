"""engine/seccomp_eval.py: classic BPF run over seccomp_data, and the refusal of filters that would
kill a stand-in that must install them before its ids (CRIU's seccomp_filter: dump refuses it)."""

from __future__ import annotations

import struct

import pytest

from engine import seccomp_eval as se


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _deny(nr: int, action: int) -> dict:
    """ld nr; jeq nr -> action, else allow."""
    return {"insns": (_ins(0x20, 0, 0, 0) + _ins(0x15, 0, 1, nr) + _ins(0x06, 0, 0, action)
                      + _ins(0x06, 0, 0, se.RET_ALLOW)).hex(), "log": False}


def test_a_chain_answers_its_most_restrictive_action():
    chain = [_deny(101, 0x00050000 | 1), _deny(117, 0)]       # ptrace: ERRNO(1); setresuid: KILL_THREAD
    assert se.answer(chain, se.AUDIT_ARCH_X86_64, 117) == 0
    assert se.answer(chain, se.AUDIT_ARCH_X86_64, 101) == 0x00050001
    assert se.answer(chain, se.AUDIT_ARCH_X86_64, 1) == se.RET_ALLOW
    assert se.answer([_deny(1, se.RET_LOG), _deny(1, 0x80000000)], se.AUDIT_ARCH_X86_64, 1) == 0x80000000


def test_arch_args_alu_and_memory():
    # ld arch; jeq x86_64 ? next : kill; ld args[0] low; and 0xff; st M[3]; ldx M[3]; txa; jgt 5 ? errno : allow
    prog = (_ins(0x20, 0, 0, 4) + _ins(0x15, 1, 0, se.AUDIT_ARCH_X86_64) + _ins(0x06, 0, 0, 0)
            + _ins(0x20, 0, 0, 16) + _ins(0x54, 0, 0, 0xFF) + _ins(0x02, 0, 0, 3) + _ins(0x61, 0, 0, 3)
            + _ins(0x87, 0, 0, 0) + _ins(0x25, 0, 1, 5) + _ins(0x06, 0, 0, 0x00050000 | 13)
            + _ins(0x06, 0, 0, se.RET_ALLOW))
    chain = [{"insns": prog.hex(), "log": False}]
    assert se.answer(chain, se.AUDIT_ARCH_X86_64, 0, (0x104,)) == se.RET_ALLOW     # 0x104 & 0xff = 4
    assert se.answer(chain, se.AUDIT_ARCH_X86_64, 0, (0x106,)) == 0x0005000D
    assert se.answer(chain, se.AUDIT_ARCH_AARCH64, 0) == 0


def test_the_calls_a_stand_in_makes_after_early_filters():
    assert se.denied_standin_call([_deny(117, 0)], "x86_64") == "setresuid"
    assert se.denied_standin_call([_deny(101, 0)], "x86_64") is None   # (ptrace: a stand-in never calls it)
    assert se.denied_standin_call([_deny(117, 0)], "riscv64") is None
    # clone3 failing with ENOSYS (Docker's default profile): glibc falls back to clone
    assert se.denied_standin_call([_deny(435, se.RET_ERRNO | 38)], "x86_64") is None
    assert se.denied_standin_call([_deny(435, se.RET_ERRNO | 1)], "x86_64") == "clone3"
    assert se.denied_standin_call([_deny(435, se.RET_ERRNO | 38), _deny(56, 0)], "x86_64") == "clone"


def test_a_program_seccomp_would_not_load_is_not_guessed():
    with pytest.raises(se.EvalError):
        se.run(_ins(0x20, 0, 0, 2), struct.pack("=iIQ6Q", 0, 0, 0, *[0] * 6))   # an unaligned load
