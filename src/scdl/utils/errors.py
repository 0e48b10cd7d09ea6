"""User errors: what a user gave (a config value, a path, a file) cannot work. Under Hydra only
their message is printed, which names the file or key and the fix; ``HYDRA_FULL_ERROR=1`` shows
the traceback. Errors of the code itself keep their traceback.

The data, split, resume, config and checkpoint errors of their own modules
(:class:`scdl.data.errors.DataCheckError`, :class:`ConfigError`, ...)
are user errors of the same kind; :func:`user_errors` turns the operating system's refusals
(permission denied, read-only file system, disk full) into one.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import CompactHydraException


class InputError(ValueError, CompactHydraException):
    """A value or file the user gave that cannot work; the message says which and the fix."""


class ConfigError(ValueError, CompactHydraException):
    """A config value that cannot work. Hydra prints only the message (no traceback)."""


class InputFileError(FileNotFoundError, CompactHydraException):
    """A file or folder the user named that is missing or not what it should be."""


class StorageError(OSError, CompactHydraException):
    """The operating system refused a read or write (permissions, read-only, disk full)."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno n] ..."
        return str(self.args[0]) if self.args else super().__str__()


#: errno values that are the user's environment, not a bug
_STORAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}

F = TypeVar("F", bound=Callable[..., Any])


def storage_message(err: OSError, where: dict[str, Any] | None = None) -> str:
    """``<file>: <reason>. Fix: ...``, naming the config key whose folder holds the file when
    ``where`` (key -> folder) contains it."""
    path = Path(str(err.filename)) if err.filename else None
    key = None
    if path is not None:
        for name, folder in (where or {}).items():
            try:
                target, folder = path.resolve(), Path(str(folder)).resolve()
                # the file is inside the folder, or is a parent being created for it
                if target.is_relative_to(folder) or folder.is_relative_to(target):
                    key = name
                    break
            except (OSError, ValueError):
                continue
    reasons: dict[int | None, str] = {
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
    }
    reason = reasons.get(err.errno, err.strerror or "permission denied")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space there, or point the output elsewhere"
    else:
        fix = "make it writable, or point the output at a writable folder"
    if key is not None:
        fix += f": {key}=<writable folder>"
    elif path is not None:
        fix += " (data.cache_dir=... for the preprocessed cache, paths.log_dir=... for runs)"
    return f"{path or 'a file'}: {reason}. Fix: {fix}"


def user_errors(where: Callable[[Any], dict[str, Any]] | None = None) -> Callable[[F], F]:
    """Decorator for a Hydra task function ``main(cfg)``: an ``OSError`` of the environment
    (permission denied, read-only file system, disk full) becomes a :class:`StorageError` whose
    message names the file and the config key to change (``where(cfg)``: key -> folder)."""

    def wrap(task: F) -> F:
        @functools.wraps(task)
        def run(cfg, *args, **kwargs):
            try:
                return task(cfg, *args, **kwargs)
            except OSError as err:
                if isinstance(err, CompactHydraException) or err.errno not in _STORAGE_ERRNOS:
                    raise
                folders = {}
                if where is not None:
                    try:
                        folders = where(cfg)
                    except Exception:  # noqa: BLE001 - the message works without the keys
                        folders = {}
                refused = StorageError(storage_message(err, folders))
                refused.errno, refused.filename = err.errno, err.filename
                raise refused from err

        return run  # type: ignore[return-value]

    return wrap


def config_folders(cfg) -> dict[str, Any]:
    """The folders a run writes to, by the key that moves them (for :func:`user_errors`)."""
    from omegaconf import OmegaConf

    keys = ("data.cache_dir", "paths.output_dir", "paths.log_dir", "output", "output_dir")
    found = {}
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # noqa: BLE001 - unresolvable outside a Hydra run
            value = None
        if value:
            found[key] = value
    return found
