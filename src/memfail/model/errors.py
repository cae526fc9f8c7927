"""Errno values the model returns, and the exception for bad scenario input."""

from __future__ import annotations

EPERM, ENOENT, EINTR, EIO, ENXIO, EBADF, ENOMEM, EFAULT = 1, 2, 4, 5, 6, 9, 12, 14
EBUSY, EEXIST, ENODEV, EINVAL, ENOSPC = 16, 17, 19, 22, 28
EOPNOTSUPP, ENOTRECOVERABLE, EHWPOISON = 95, 131, 133
ESRCH = 3

ERRNO_NAMES = {
    EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO",
    EBADF: "EBADF", ENOMEM: "ENOMEM", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST",
    ENODEV: "ENODEV", EINVAL: "EINVAL", ENOSPC: "ENOSPC", EOPNOTSUPP: "EOPNOTSUPP",
    ENOTRECOVERABLE: "ENOTRECOVERABLE", EHWPOISON: "EHWPOISON", ESRCH: "ESRCH",
}


def errno_name(err: int) -> str:
    """``-16`` or ``16`` -> ``"EBUSY"``; 0 -> ``"0"``."""
    return ERRNO_NAMES.get(abs(err), str(err)) if err else "0"


class ModelInputError(ValueError):
    """An action refers to something that does not exist or cannot be (bad scenario input).

    ``field`` names the offending action field, so the scenario layer can point at its line.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ProfileMissing(ModelInputError):
    """The kernel profile lacks a feature the input uses (``refuse_missing``): the profile
    is what to change, so a configuration's error points at its ``profile``."""


class TargetGone(ModelInputError):
    """What an action refers to existed but is gone because of what happened earlier in the
    run (the VM was killed, its memory released, the fd closed): the action fails with
    ``errno`` (ENOENT, EBADF) instead of being bad input."""

    def __init__(self, message: str, field: str | None = None, errno: str = "ENOENT") -> None:
        super().__init__(message, field)
        self.errno = errno


class KernelPanic(Exception):
    """Raised inside the model when the host kernel panics; the host stops executing."""
