"""Keeping users apart on one machine: OS accounts, link-safe files, process markers.

With ``LocalLauncher.run_as = "user"`` the root gateway works inside directories
that belong to its users. A user's code can plant a link or a hard link there at
any moment, so nothing below a cluster's directory is opened by path: each step
is opened relative to a descriptor of the one before, never following a link,
and a file the gateway writes is always created new (``staging.write_private_file``).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
from dataclasses import dataclass
from typing import Any

import psutil

from ..config import ConfigError
from .base import LOG_TAIL_BYTES

# Portable OS account names: no '/', no '..', no whitespace or control characters.
ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
# Environment variables that carry the gateway's own credentials (upstream's proxy
# token and database keys, JupyterHub's API token, Kerberos...): never inherited.
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|ENCRYPT|CREDENTIAL|KEYTAB|PRIVATE|_KEYS?$|^KRB5", re.I)
NOBODY = 65534  # "nobody" and the overflow ids above it: shared by daemons, never a user's
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class UserRefused(ValueError):
    """This gateway user may not run processes with this launcher; the message says why."""


@dataclass(frozen=True)
class Account:
    """The OS account a user's cluster runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def resolve_account(username: str, min_uid: int) -> Account:
    """The OS account named exactly like gateway user ``username``, or ``UserRefused``.

    The name comes from an authenticator, so it is hostile until checked: it must be a
    plain account name, name an existing account spelt the same (no case folding by the
    name service) and not a system account (uid below ``min_uid``, root group, nobody).
    """
    shown = repr(username)[:80]
    if not isinstance(username, str) or not ACCOUNT_NAME.fullmatch(username):
        raise UserRefused(
            f"user name {shown} cannot be an OS account name (letters, digits, '_', '.', "
            "'-', starting with a letter or '_', at most 32 characters), and this gateway "
            "runs clusters as the OS account of their user (LocalLauncher.run_as = 'user')"
        )
    try:
        pw = pwd.getpwnam(username)
    except KeyError:
        pw = None
    if pw is None or pw.pw_name != username:
        raise UserRefused(
            f"user {shown} has no OS account on the gateway's machine, and this gateway runs "
            "clusters as the OS account of their user (LocalLauncher.run_as = 'user'): ask "
            "the admins for an account"
        )
    if not min_uid <= pw.pw_uid < NOBODY or pw.pw_gid in (0, NOBODY):
        raise UserRefused(
            f"user {shown} is a system account (uid {pw.pw_uid}, gid {pw.pw_gid}; "
            f"LocalLauncher.min_uid = {min_uid}): clusters never run as one"
        )
    groups = tuple(g for g in os.getgrouplist(username, pw.pw_gid) if g != 0)
    return Account(username, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


def check_work_directory_for_users(path: str) -> None:
    """Make ``path`` root's and 0711; refuse one that users could not pass through."""
    root = os.path.realpath(path)
    st = os.lstat(root)
    if st.st_uid != 0:
        raise ConfigError(
            f"LocalLauncher.work_directory {root} belongs to uid {st.st_uid}, not root: "
            "its owner could replace other users' cluster directories"
        )
    os.chmod(root, 0o711)
    parent = root
    while parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
        mode = os.stat(parent).st_mode
        if not mode & stat.S_IXOTH:
            raise ConfigError(
                f"LocalLauncher.work_directory {root} is inside {parent} (mode "
                f"{stat.S_IMODE(mode):04o}), which other users cannot pass through, so no "
                "cluster process could reach its directory: choose a work_directory "
                "outside the gateway's state directory, e.g. /var/lib/elastic-gateway-work"
            )


def private_subdir(dir_fd: int, name: str, uid: int, gid: int) -> int:
    """Open (making it if needed) directory ``name`` below ``dir_fd``, owned by uid, 0700."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    fd = os.open(name, DIRECTORY, dir_fd=dir_fd)
    os.fchown(fd, uid, gid)
    os.fchmod(fd, 0o700)
    return fd


def remove_below(directory: str, *names: str) -> None:
    """``rm -rf directory/names...`` without following a link planted on the way."""
    *parents, last = names
    fds = []
    try:
        fds.append(os.open(directory, DIRECTORY))
        for name in parents:
            fds.append(os.open(name, DIRECTORY, dir_fd=fds[-1]))
        shutil.rmtree(last, ignore_errors=True, dir_fd=fds[-1])
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)


def read_tail(directory: str, sub: str, name: str, owner: int, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of ``directory/sub/name`` if a plain file of ``owner``, else ''.

    Not a link, a FIFO, a hard link or another user's file: what the gateway reads
    there ends up in messages to the directory's user.
    """
    fds = []
    try:
        fds.append(os.open(directory, DIRECTORY))
        fds.append(os.open(sub, DIRECTORY, dir_fd=fds[-1]))
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        fds.append(os.open(name, flags, dir_fd=fds[-1]))
        st = os.fstat(fds[-1])
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_nlink != 1:
            return ""
        data = os.pread(fds[-1], limit, max(0, st.st_size - limit))
        return data.decode("utf-8", "replace").strip()
    except OSError:
        return ""
    finally:
        for fd in fds:
            os.close(fd)


def find_processes(work_directory: str) -> list[tuple[str, str | None, bool, dict[str, Any]]]:
    """Processes in cluster directories: (cluster, worker or None, started by us?, state).

    Every process the local launcher starts enters ``<cluster>`` (a scheduler) or
    ``<cluster>/workers/<worker>`` first thing, as a session leader: that marks it.
    """
    root = os.path.abspath(work_directory)
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "create_time", "uids"]):
        cwd = proc.info.get("cwd") or ""
        if not cwd.startswith(root + os.sep):
            continue
        parts = cwd[len(root) + 1 :].split(os.sep)
        worker = parts[2] if len(parts) == 3 and parts[1] == "workers" else None
        marked = len(parts) == 1 or worker is not None
        pid = proc.info["pid"]
        try:
            leader = marked and os.getsid(pid) == pid
        except OSError:
            continue
        uids = proc.info.get("uids")
        state = {"pid": pid, "create_time": proc.info["create_time"]}
        found.append((parts[0], worker, leader, {**state, "uid": uids and uids.real}))
    return found
