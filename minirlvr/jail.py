"""The Linux containment layers of the sandbox (sandbox.py): new namespaces, a read-only filesystem, and the
ctypes calls (mount, mount_setattr, prctl, unshare) they take. Standard library only, like sandbox.py, which
loads this file by path; what each layer buys is told in sandbox.py's docstring.
"""

import ctypes
import os

# Linux constants (include/uapi/linux/{sched,mount,prctl}.h); the syscall number of
# mount_setattr is the same (442) on every architecture that has it.
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = -100, 0x8000, 442
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(s):
    return None if s is None else s.encode()


def _mount(source, target, fstype, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
           f"mount {target}")


def _mount_setattr(path: str, flags: int, set_: int = 0, clear: int = 0) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, _enc(path), flags,
                         ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {path}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def unshare_namespaces(root: bool) -> set:
    """Enter new net/mount/pid/ipc namespaces; returns the names that worked."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    try:
        if root:
            _check(_libc.unshare(flags), "unshare")
        else:
            # An unprivileged user may own namespaces inside its own user namespace.
            uid, gid = os.getuid(), os.getgid()
            _check(_libc.unshare(flags | CLONE_NEWUSER), "unshare")
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                               ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except OSError:
        return set()
    return {"netns", "mountns", "pidns", "ipcns"}


def _expose_stdlib() -> None:
    """Let the sandbox uid import from the stdlib even when it lives in a private directory
    (here /root/.pyenv/..., /root being mode 700): cover the first untraversable ancestor
    with an empty tmpfs and bind only the stdlib directory back in. The rest of that
    directory (a home, say) stays invisible."""
    stdlib = os.path.dirname(os.__file__)
    path, blocked = "/", None
    for part in stdlib.strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & 0o001:           # 'other' may not traverse it
            blocked = path
            break
    if blocked is None or blocked == stdlib:
        return
    keep = os.open(stdlib, os.O_PATH)                   # still reachable once `blocked` is covered
    try:
        _mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64k")
        os.makedirs(stdlib, mode=0o755)
        _mount(f"/proc/self/fd/{keep}", stdlib, None, MS_BIND | MS_REC)
    finally:
        os.close(keep)


def seal_filesystem(workdir: str, own_proc: bool) -> None:
    """Read-only everything except `workdir`, inside our private mount namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)          # nothing below propagates to the host
    _mount(workdir, workdir, None, MS_BIND)               # make workdir a mount of its own
    _expose_stdlib()
    if own_proc:                                          # /proc of our pid namespace only
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount_setattr("/", AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    _mount_setattr(workdir, 0, set_=MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, clear=MOUNT_ATTR_RDONLY)
