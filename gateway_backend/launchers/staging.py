"""Writing a cluster's TLS credentials to private files, for launchers whose processes read files.

One implementation for every launcher: the local launcher writes them inside a
directory its user owns (through a directory descriptor, so a link the user
planted is never followed), the HTCondor launcher into its own staging
directory, from where jobs transfer them as encrypted input files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import TYPE_CHECKING

from ..commands import CERT_FILE, KEY_FILE

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster


def write_private_file(
    path: str, data: bytes, *, dir_fd: int | None = None, owner: tuple[int, int] | None = None
) -> None:
    """Put a new file holding ``data``, mode 0600, in place of whatever ``path`` was.

    The bytes go to a newly created file (never one opened through a planted
    link), which then replaces ``path`` in one rename: a concurrent reader (a
    job's input transfer) sees the old file or the new one, never a part.
    ``dir_fd``: ``path`` is relative to that directory. ``owner``: the (uid,
    gid) the file belongs to before the first byte is written.
    """
    head, tail = os.path.split(path)
    temporary = os.path.join(head, f".{tail}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(data)
        os.replace(temporary, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def write_credentials(
    cluster: Cluster,
    directory: str = "",
    *,
    dir_fd: int | None = None,
    owner: tuple[int, int] | None = None,
) -> tuple[str, str]:
    """Write ``cluster``'s TLS certificate and key into ``directory``; their paths.

    With ``dir_fd``, ``directory`` is relative to it (``""``: that directory itself).
    """
    paths = []
    for name, data in ((CERT_FILE, cluster.tls_cert), (KEY_FILE, cluster.tls_key)):
        path = os.path.join(directory, name)
        write_private_file(path, data, dir_fd=dir_fd, owner=owner)
        paths.append(path)
    return paths[0], paths[1]
