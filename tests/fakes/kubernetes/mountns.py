"""Bind-mount a pod's volume copies at their container paths, then exec the container.

Run by the process kubelet in a fresh private mount namespace (``unshare --mount
--propagation private``, root):

    python mountns.py --stash DIR --bind SRC DST ro|rw [--bind ...] -- COMMAND...

Where a mountPath's parent does not exist (``/var/run/secrets/...``), the deepest existing
ancestor gets a tmpfs over it that still shows that ancestor's entries (each bind-mounted
back), and the missing directories are made on the tmpfs: nothing is created on the host, and
nothing the container could see before is hidden. Failures go to stderr (the container's log)
with exit code 127.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2), raising OSError with the path."""
    enc = [s.encode() if s is not None else None for s in (src, dst, fstype)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def cover(base: Path, stash: Path) -> None:
    """A tmpfs over ``base`` that still shows ``base``'s entries, so it can take new dirs."""
    keep = stash / f"keep-{len(list(stash.iterdir()))}"
    keep.mkdir()
    mount(str(base), str(keep), None, MS_BIND | MS_REC)
    mode = base.stat().st_mode & 0o7777
    mount("tmpfs", str(base), "tmpfs", 0, f"mode={mode:o}")
    for entry in os.scandir(keep):
        target = base / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
            continue
        if entry.is_dir():
            target.mkdir()
        else:
            target.touch()
        mount(entry.path, str(target), None, MS_BIND | MS_REC)
    if _libc.umount2(str(keep).encode(), MNT_DETACH) == 0:
        keep.rmdir()


def ensure_dir(path: str, stash: Path) -> Path:
    """``path`` as an existing directory in this mount namespace (made on a tmpfs if needed)."""
    target = Path(path)
    existing = target
    while not os.path.lexists(existing):
        existing = existing.parent
    if existing == target:
        return target
    base = Path(os.path.realpath(existing))
    rest = target.relative_to(existing)
    cover(base, stash)
    (base / rest).mkdir(parents=True)
    return base / rest


def main(argv: list[str]) -> None:
    """Parse ``--stash``, ``--bind``s and the command; mount; exec."""
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    stash = Path(opts[opts.index("--stash") + 1])
    stash.mkdir(parents=True, exist_ok=True, mode=0o700)
    binds = [opts[i + 1 : i + 4] for i, a in enumerate(opts) if a == "--bind"]
    try:
        for src, dst, ro in binds:
            target = ensure_dir(dst, stash)
            mount(src, str(target), None, MS_BIND | MS_REC)
            if ro == "ro":
                mount(None, str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    except OSError as exc:
        print(f"process kubelet: cannot mount the pod's volumes: {exc}", file=sys.stderr)
        sys.exit(127)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
