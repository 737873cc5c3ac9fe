"""The seccomp filter, built with pyseccomp and exported as raw BPF.

The filter does not depend on the policy (policies are swapped live), so it is built
once per process and cached. What it does, for x86-64:

* connect, sendmsg, sendmmsg, and sendto with a non-NULL destination go to the
  supervisor (SECCOMP_RET_USER_NOTIF). sendto with a NULL destination — every
  ``send()`` on a connected socket — is decided on a register and never trapped.
* bind goes to the supervisor too (rare): an AF_UNIX bind is performed and recorded
  there, so that sockets the sandbox serves stay reachable to it (sandlock._local).
* socket() is refused for families other than UNIX/INET/INET6/NETLINK
  (EAFNOSUPPORT), for INET types other than stream and datagram (EPERM: raw,
  packet-like, seqpacket) and for protocols other than TCP, UDP, ICMP/ICMPv6
  (EPROTONOSUPPORT: SCTP, MPTCP, UDP-Lite, ...). These are decided on registers only.
* accept and accept4 go to the supervisor, which accepts on our duplicate and hands
  the child only connections whose peer the policy allows (sandlock.inbound).
* setsockopt() of IP source-routing options (IP_OPTIONS, IPV6_RTHDR and the RFC 2292
  forms) is refused: a source route sends the packet to its first hop, not to the
  destination we checked.
* io_uring_setup is refused (ENOSYS): io_uring connects and sends without syscalls.
* seccomp() with SECCOMP_FILTER_FLAG_NEW_LISTENER is refused (EPERM): a listener
  installed by the child sits above ours, receives the same notifications first and
  could answer CONTINUE.
* ioctl(TIOCSTI) is refused (EPERM), on both entries: it types into the terminal the
  command shares with us (the answer to a --ask prompt, sandlock.ask) and with the shell
  that started it (a command line run outside the sandbox once it exits).
* Only in the variant built with ``trap_open=True`` (the virtual /etc/hosts and
  /etc/resolv.conf of sandlock.vfiles): open and openat go to the supervisor when their
  flags could be a plain read (no write access mode, no O_CREAT, O_TRUNC, O_APPEND,
  O_PATH, O_DIRECTORY or O_TMPFILE: ``OPEN_NOT_TRAPPED``), and openat2 always (its flags
  are in memory, out of the filter's reach). The supervisor answers everything it does not
  serve with SECCOMP_USER_NOTIF_FLAG_CONTINUE. Opens with write intent never reach it.
* Only in the variant built with ``own_sockets=True`` (where pidfd_getfd is refused, as
  in a default container; csrc/owned.h): socket() and socketpair() go to the supervisor,
  which makes the socket itself, as the caller, and keeps a duplicate. The refusals of
  socket() above are then the supervisor's (``socket_refusal``, from the same tables).
* Only in the variant built with ``refuse_reach=True`` (for kernels without Landlock,
  whose domain otherwise keeps the sandbox out of other processes; see launch.py):
  ptrace(PTRACE_ATTACH) and ptrace(PTRACE_SEIZE), process_vm_readv, process_vm_writev
  and pidfd_getfd are refused (EPERM), on both entries. The sandbox can then trace
  nothing it did not start with PTRACE_TRACEME. Signals and /proc/PID/mem are out of a
  filter's reach (the target is a pid, the path is in memory): not contained.
* The IA-32 entry (int 0x80: socketcall and the direct i386 socket calls) is closed
  (ENOSYS), and so is every foreign architecture, including x32 syscall numbers
  (libseccomp treats them as a bad architecture).

Integer arguments are compared through a 32-bit mask (or with ``>`` on the whole 64-bit
register, which catches stray upper bits) because the kernel truncates them to int.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator

import pyseccomp as sc

from . import _syscalls as sys_

_INT = 0xFFFF_FFFF
_FULL = 0xFFFF_FFFF_FFFF_FFFF

SECCOMP_SET_MODE_FILTER = sys_.SET_MODE_FILTER
SECCOMP_FILTER_FLAG_NEW_LISTENER = sys_.FILTER_FLAG_NEW_LISTENER

# IP options that reroute a packet: refused at setsockopt.
_SOURCE_ROUTES = (
    (socket.IPPROTO_IP, 4),  # IP_OPTIONS (LSRR/SSRR)
    (socket.IPPROTO_IPV6, 5),  # IPV6_2292RTHDR
    (socket.IPPROTO_IPV6, 6),  # IPV6_2292PKTOPTIONS (may carry a routing header)
    (socket.IPPROTO_IPV6, 57),  # IPV6_RTHDR
)

# open/openat flags that are never a plain read, so never served a virtual file: such
# opens are not trapped at all (sandlock.vfiles.NOT_SERVED_FLAGS holds the same value;
# a test keeps the two equal).
OPEN_NOT_TRAPPED = (
    os.O_ACCMODE | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_PATH | os.O_DIRECTORY | os.O_TMPFILE
)

_ALLOWED_FAMILIES = {
    int(f) for f in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK)
}
_ALLOWED_TYPES = {int(socket.SOCK_STREAM), int(socket.SOCK_DGRAM)}
_ALLOWED_PROTOCOLS: dict[tuple[int, int], set[int]] = {
    (socket.AF_INET, socket.SOCK_STREAM): {0, socket.IPPROTO_TCP},
    (socket.AF_INET6, socket.SOCK_STREAM): {0, socket.IPPROTO_TCP},
    (socket.AF_INET, socket.SOCK_DGRAM): {0, socket.IPPROTO_UDP, socket.IPPROTO_ICMP},
    (socket.AF_INET6, socket.SOCK_DGRAM): {0, socket.IPPROTO_UDP, socket.IPPROTO_ICMPV6},
}
_I386_SOCKET_CALLS = (
    "socketcall",
    "socket",
    "connect",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "setsockopt",
    "io_uring_setup",
    "accept4",
)


def _blocks(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Cover [lo, hi] with aligned power-of-two blocks, as (mask, value) pairs."""
    while lo <= hi:
        size = lo & -lo if lo else 1 << 62
        while size > hi - lo + 1:
            size >>= 1
        yield _FULL & ~(size - 1), lo
        lo += size


def _outside(allowed: set[int], top: int) -> Iterator[tuple[int, int]]:
    """(mask, value) pairs matching every value in [0, top] that is not allowed."""
    run_start = None
    for v in range(top + 1):
        if v in allowed:
            if run_start is not None:
                yield from _blocks(run_start, v - 1)
                run_start = None
        elif run_start is None:
            run_start = v
    if run_start is not None:
        yield from _blocks(run_start, top)


def _refuse(
    f: sc.SyscallFilter, err: int, name: str, arg: int, allowed: set[int], *fixed: sc.Arg
) -> None:
    """Refuse ``name`` whenever argument ``arg`` is not in ``allowed`` (given ``fixed``)."""
    top = max(allowed)
    action = sc.ERRNO(err)
    f.add_rule(action, name, *fixed, sc.Arg(arg, sc.GT, top))
    for mask, value in _outside(allowed, top):
        f.add_rule(action, name, *fixed, sc.Arg(arg, sc.MASKED_EQ, mask, value))


def socket_refusal(family: int, sock_type: int, protocol: int) -> int:
    """The errno the filter's socket() rules give these raw (64-bit) arguments, or 0: the
    same decision, for the variant where the supervisor makes the sockets."""
    if family not in _ALLOWED_FAMILIES:
        return errno.EAFNOSUPPORT
    if family in (socket.AF_INET, socket.AF_INET6):
        kind = sock_type & 0xF
        if kind not in _ALLOWED_TYPES:
            return errno.EPERM
        if protocol not in _ALLOWED_PROTOCOLS[(family, kind)]:
            return errno.EPROTONOSUPPORT
    return 0


def _add_socket_rules(f: sc.SyscallFilter) -> None:
    _refuse(f, errno.EAFNOSUPPORT, "socket", 0, _ALLOWED_FAMILIES)
    for family in (socket.AF_INET, socket.AF_INET6):
        fam = sc.Arg(0, sc.MASKED_EQ, _INT, family)
        for t in range(16):
            if t not in _ALLOWED_TYPES:  # the type's low four bits; the rest are flags
                f.add_rule(sc.ERRNO(errno.EPERM), "socket", fam, sc.Arg(1, sc.MASKED_EQ, 0xF, t))
        for sock_type in _ALLOWED_TYPES:
            typ = sc.Arg(1, sc.MASKED_EQ, 0xF, sock_type)
            allowed = _ALLOWED_PROTOCOLS[(family, sock_type)]
            _refuse(f, errno.EPROTONOSUPPORT, "socket", 2, allowed, fam, typ)


TIOCSTI = 0x5412  # <asm-generic/ioctls.h>: push a byte into a terminal's input queue


def _add_common_refusals(f: sc.SyscallFilter) -> None:
    # TIOCSTI types into the terminal the command shares with us and with the shell it
    # came from: an answer to a --ask prompt (ask.py), or a command line run outside the
    # sandbox once it exits. Linux >= 6.2 can turn it off (dev.tty.legacy_tiocsti=0);
    # where it is on, the filter refuses it (the ioctl's request is an unsigned int).
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, _INT, TIOCSTI))
    f.add_rule(
        sc.ERRNO(errno.EPERM),
        "seccomp",
        sc.Arg(0, sc.MASKED_EQ, _INT, SECCOMP_SET_MODE_FILTER),
        sc.Arg(1, sc.MASKED_EQ, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER),
    )


def _add_accept_traps(f: sc.SyscallFilter) -> None:
    """accept and accept4, always to the supervisor (the peer is decided there)."""
    f.add_rule(sc.NOTIFY, "accept")
    f.add_rule(sc.NOTIFY, "accept4")


PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206
_REACH_CALLS = ("process_vm_readv", "process_vm_writev", "pidfd_getfd")


def _add_reach_refusals(f: sc.SyscallFilter) -> None:
    """The fallback for kernels without Landlock: no attaching to, reading or writing
    the memory of, or taking descriptors from another process (EPERM)."""
    for request in (PTRACE_ATTACH, PTRACE_SEIZE):
        f.add_rule(sc.ERRNO(errno.EPERM), "ptrace", sc.Arg(0, sc.EQ, request))
    for name in _REACH_CALLS:
        f.add_rule(sc.ERRNO(errno.EPERM), name)


def _add_open_traps(f: sc.SyscallFilter) -> None:
    """open, openat with possibly read-only flags, and every openat2, to the supervisor."""
    f.add_rule(sc.NOTIFY, "open", sc.Arg(1, sc.MASKED_EQ, OPEN_NOT_TRAPPED, 0))
    f.add_rule(sc.NOTIFY, "openat", sc.Arg(2, sc.MASKED_EQ, OPEN_NOT_TRAPPED, 0))
    f.add_rule(sc.NOTIFY, "openat2")


def _build_native(trap_open: bool, refuse_reach: bool, own_sockets: bool) -> sc.SyscallFilter:
    """The x86-64 rules (see the module docstring)."""
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    # The hot calls first: they are tested before everything else.
    f.add_rule(sc.NOTIFY, "connect")
    f.add_rule(sc.NOTIFY, "sendto", sc.Arg(4, sc.NE, 0))
    f.add_rule(sc.NOTIFY, "sendmsg")
    f.add_rule(sc.NOTIFY, "sendmmsg")
    for name in ("connect", "sendto", "sendmsg", "sendmmsg"):
        f.syscall_priority(name, 255)
    f.add_rule(sc.NOTIFY, "bind")  # AF_UNIX binds are recorded (_local.UnixGuard)
    if own_sockets:
        f.add_rule(sc.NOTIFY, "socket")
        f.add_rule(sc.NOTIFY, "socketpair")
    else:
        _add_socket_rules(f)
    _add_accept_traps(f)
    for level, opt in _SOURCE_ROUTES:
        f.add_rule(
            sc.ERRNO(errno.EPERM),
            "setsockopt",
            sc.Arg(1, sc.MASKED_EQ, _INT, level),
            sc.Arg(2, sc.MASKED_EQ, _INT, opt),
        )
    f.add_rule(sc.ERRNO(errno.ENOSYS), "io_uring_setup")
    _add_common_refusals(f)
    if trap_open:
        _add_open_traps(f)
    if refuse_reach:
        _add_reach_refusals(f)
    return f


def _i386_refusals(f: sc.SyscallFilter) -> None:
    """The IA-32 socket calls are closed outright (ENOSYS)."""
    for name in _I386_SOCKET_CALLS:
        f.add_rule(sc.ERRNO(errno.ENOSYS), name)


def build_filter(
    trap_open: bool = False, refuse_reach: bool = False, own_sockets: bool = False
) -> sc.SyscallFilter:
    """The whole filter: the native rules merged with the closed IA-32 entry.

    With ``trap_open`` the read-only opens are trapped too, with ``refuse_reach`` the
    calls that reach into other processes are refused, with ``own_sockets`` the sockets
    are made by the supervisor (see the module docstring)."""
    f = _build_native(trap_open, refuse_reach, own_sockets)
    x86 = sc.SyscallFilter(sc.ALLOW)
    x86.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    x86.remove_arch(sc.system_arch())
    x86.add_arch(sc.Arch.X86)
    _i386_refusals(x86)
    _add_common_refusals(x86)
    if refuse_reach:
        _add_reach_refusals(x86)
    f.merge(x86)
    return f


def build_bpf(
    trap_open: bool = False, refuse_reach: bool = False, own_sockets: bool = False
) -> bytes:
    """The filter as BPF bytes for seccomp(2) (sandlock._bpf caches them)."""
    f = build_filter(trap_open, refuse_reach, own_sockets)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        data = out.read()
    if not data or len(data) % 8:
        raise OSError(errno.EINVAL, "seccomp filter export produced no program")
    return data


if __name__ == "__main__":  # pragma: no cover - a debugging aid: print the filter
    import sys

    trap = "--trap-open" in sys.argv[1:]
    reach = "--refuse-reach" in sys.argv[1:]
    build_filter(trap, reach).export_pfc(sys.stdout)
    print(f"{len(build_bpf(trap, reach)) // 8} BPF instructions", file=sys.stderr)
    os._exit(0)
