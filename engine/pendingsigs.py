"""Signals a process holds pending and blocked when the tree stops, raised again by its stand-in.

A signal sent to a process that blocks it waits in one of two queues until the process unblocks
or takes it (sigwaitinfo, a signalfd): its main thread's own (/proc/PID/status SigPnd: tgkill,
pthread_kill, raise) or the process's (ShdPnd: kill). A stand-in blocks what the process blocked
(engine/kernel.py take_blocked_signals) but held none pending: a SIGCHLD that tini, dumb-init or a
service blocking it had still to take, a SIGHUP or SIGTERM sent while it was busy, were lost.

Dump keeps (`read`) the main thread's pending signals and the process's that every thread blocks:
one of the process's that a thread does not block is on its way to that thread, and the stand-in
takes each thread's own mask for a moment to make it (engine/threads.py steps), in which one of its
own would be delivered: the stand-in would run its default action. The stand-in raises them again
(`take`) as it detaches, right after it blocked them: by tgkill to itself for its own, by kill for
the process's; no later step (become_exe's, the threads') unblocks them. SIGCHLD is kept only for a
process with a zombie child (an exit it has still to take): the dump's own stop sent one to the
parent of every process it stopped (CLD_STOPPED), and a parent blocking SIGCHLD holds that pending;
one left over from a child it reaped since means nothing. What restore gives is the set: a standard
signal is pending once at most, but a real-time one sent N times is raised once, and the sender a
siginfo named (si_pid, si_uid, si_value) is the stand-in itself; a thread's own pending signals (but
the main thread's) are not kept. SIGKILL and SIGSTOP are never blocked; the C library's own 32 and
33 are left out.
"""

from __future__ import annotations

import _signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)
import _thread
import os

from engine import kernel

# SIGKILL, SIGSTOP (never blocked), glibc's SIGCANCEL and SIGSETXID (its own business)
_NEVER = 1 << 8 | 1 << 18 | 1 << 31 | 1 << 32
_ALL = (1 << 64) - 1
_SIGCHLD = 1 << 16


def read(pid: int, blocked: int, thread_masks=(), zombie_child: bool = False) -> dict:
    """{"sig_pending": mask, "sig_pending_shared": mask} of stopped process `pid` (each key only
    when not empty): the pending signals of its main thread and of the process that it (`blocked`,
    its main thread's mask) and every other thread (`thread_masks`) block; SIGCHLD only with
    `zombie_child`."""
    got = kernel.proc_status(pid, {"SigPnd", "ShdPnd"})
    every = kept(blocked, zombie_child)
    for mask in thread_masks:
        every &= mask
    own = int(got.get("SigPnd", "0"), 16) & every & ~_NEVER & _ALL
    shared = int(got.get("ShdPnd", "0"), 16) & every & ~_NEVER & _ALL
    out = {}
    if own:
        out["sig_pending"] = own
    if shared:
        out["sig_pending_shared"] = shared
    return out


def kept(mask: int, zombie_child: bool) -> int:
    """`mask` as dump keeps it: without SIGCHLD unless a zombie child awaits its parent. One with no
    exit to take means nothing: a child's stop sends one too, dump's own stops and a restore's steps
    on a child as much as a job's Ctrl-Z."""
    return mask if zombie_child else mask & ~_SIGCHLD


def signals(mask: int) -> list[int]:
    """The signal numbers whose bit (n-1 for signal n) is set in `mask`."""
    return [n + 1 for n in range(64) if mask >> n & 1]


def take(own: int, shared: int, blocked: int) -> None:
    """Raise the signals of `own` to the calling thread (a stand-in's main thread) and those of
    `shared` to our process, each only when `blocked` (the mask it took already: its last steps,
    engine/standin.py) has it: it stays pending. (An image is not trusted: one it does not block
    would run its default action in the stand-in.)"""
    for sig in signals(shared & blocked & ~_NEVER):
        os.kill(os.getpid(), sig)
    for sig in signals(own & blocked & ~_NEVER):
        _signal.pthread_kill(_thread.get_ident(), sig)
