"""A default Docker container, simulated: run a command as Docker would run it.

    python tests/container.py [--uid N] -- CMD [ARG...]

What a default ``docker run`` (and Kubernetes ``RuntimeDefault``) gives a process, as far
as sandlock can tell the difference:

* the capability bounding set is Docker's default set (``DOCKER_CAPS``): no SYS_PTRACE,
  no SYS_ADMIN, no NET_ADMIN. Root keeps those as its permitted and effective sets; with
  ``--uid`` the command runs as that uid and gid with no supplementary groups and no
  capabilities (as ``docker run --user N:N``);
* a seccomp filter refusing what Docker's default profile (moby profiles/seccomp) refuses
  that sandlock might use or a test might try: pidfd_getfd, kcmp and process_madvise
  (EPERM: Docker allows them only with CAP_SYS_PTRACE), io_uring, namespaces (unshare,
  setns, clone with a namespace flag), the mount family, socket(AF_VSOCK) and the kernel
  administration calls (EPERM), and clone3 (ENOSYS, so that libc falls back to clone).
  Everything else is allowed, as the profile allows it: ptrace, process_vm_readv/writev,
  pidfd_open, seccomp (with NEW_LISTENER), ioctl, landlock_*.

The filter is installed while we are still root with CAP_SYS_ADMIN, so no_new_privs is
not set (Docker does not set it either, unless ``--security-opt no-new-privileges``); run
by anyone else, no_new_privs is needed to install it and is set. Then we exec setpriv,
which sets the bounding set (and the uid), which execs the command.

tests/test_container.py proves the launcher does what it says; the container-mode runs
of the enforcement, attack, API and daemon tests use it, and so does bench/ (rows inside
a container next to the host ones).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

# Docker's default capabilities (moby oci/caps/defaults.go), setpriv's spelling.
DOCKER_CAPS = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)  # fmt: skip

# Refused with EPERM (Docker's default action for what its profile does not allow).
REFUSED = (
    "pidfd_getfd", "kcmp", "process_madvise",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "unshare", "setns",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "acct", "swapon", "swapoff", "reboot",
    "settimeofday", "clock_settime", "syslog", "vhangup", "iopl", "ioperm", "quotactl",
)  # fmt: skip

AF_VSOCK = 40
# clone flags Docker refuses without CAP_SYS_ADMIN (the namespace flags).
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

HERE = os.path.abspath(__file__)
REPO = Path(HERE).parents[1]
# What a copy of the project needs to run sandlock, its tests and its benchmarks.
_COPIED = ("sandlock", "tests", "bench", "examples", "pyproject.toml", "README.md")


def launcher(uid: int | None = None) -> list[str]:
    """The argv prefix that runs a command in the simulated container (as ``uid``)."""
    return [sys.executable, HERE, *(["--uid", str(uid)] if uid is not None else []), "--"]


def install_filter() -> None:
    """Install the Docker-like seccomp filter on this process (inherited by what it execs)."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.CTL_NNP, 0 if os.geteuid() == 0 else 1)
    # Docker's profile lists the x32 and IA-32 entries too, allowing what it allows there:
    # other architectures pass here (sandlock's own filter decides them), never killed.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.ALLOW)
    for name in REFUSED:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ERRNO(errno.EPERM), "socket", sc.Arg(0, sc.EQ, AF_VSOCK))
    for flag in NAMESPACE_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.load()


def setpriv_argv(uid: int | None, cmd: Sequence[str]) -> list[str]:
    """setpriv's command line: Docker's bounding set (and the uid), then ``cmd``."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SystemExit("container.py: setpriv (util-linux) is needed")
    caps = ",".join(f"+{c}" for c in DOCKER_CAPS)
    argv = [setpriv, f"--bounding-set=-all,{caps}", "--inh-caps=-all"]
    if uid is not None:
        argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return [*argv, "--", *cmd]


def public_tree(dest: Path) -> Path:
    """A copy of the project that another uid can run (it cannot enter /root, where the
    checkout and its venv may live): under ``dest`` (made world-readable), a venv of
    /usr/bin/python3 holding a copy of our venv's packages, and a copy of the source
    tree (with the built extension) on its path. Returns that venv's python."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    venv = dest / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    shutil.copytree(
        ours,
        theirs,
        symlinks=True,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__editable__*", "__pycache__"),
    )
    src = dest / "src"
    for name in _COPIED:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(
                origin,
                src / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", ".peer-venv", "*.egg-info"),
            )
        elif origin.exists():
            src.mkdir(exist_ok=True)
            shutil.copy2(origin, src / name)
    (theirs / "sandlock-src.pth").write_text(f"{src}\n")
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    return venv / "bin" / "python"


def main(args: Sequence[str]) -> None:
    uid = None
    args = list(args)
    if args[:1] == ["--uid"]:
        uid = int(args[1])
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        raise SystemExit("usage: container.py [--uid N] -- CMD [ARG...]")
    argv = setpriv_argv(uid, args)
    install_filter()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
