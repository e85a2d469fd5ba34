"""The errors every command reports the same way: one line, and the exit code of the error's class.

This package sits below every other one (model, data, train, infer, launch and conf may all import it) and
imports nothing of the project (only the standard library), so a package raises the project's errors without
importing the layer that reports them. A command catches `ProjectError` once and ends with
`report_and_exit`: `f"{err.label}: {err}"` on stderr, exit `err.exit_code`.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FILE_ENV = "DIFFV2_EXIT_FILE"
"""Set by `python -m launch` for its workers: rank 0 writes the code it exits with to this file, since
torchrun itself exits 1 whatever code a worker failed with."""


class ProjectError(Exception):
    """An error a command reports as one line (no traceback), exiting with `exit_code`."""

    exit_code: int = 1
    label: str = "error"


class ConfigError(ProjectError, ValueError):
    """A config value that cannot run; the message names the key, the value and what was expected."""

    exit_code = 2
    label = "config error"


class UnknownConfigKey(ConfigError):
    """A key the schema does not know, e.g. added with `+` (Hydra suggests `+key=` for a misspelt key)."""

    exit_code = 1


class DatasetUnavailable(ProjectError):
    """The dataset cannot be found, prepared or read (a missing or corrupt shard, an unreachable bucket)."""

    exit_code = 2
    label = "dataset unavailable"


class Diverged(ProjectError):
    """The loss became non-finite; nothing of the diverged step was saved."""

    exit_code = 3
    label = "training diverged"


class CheckpointRefused(ProjectError):
    """A checkpoint or export that must not be loaded: corrupt, unsafe, incomplete, or of another model."""

    exit_code = 4
    label = "checkpoint refused"


class RunDirRefused(ProjectError):
    """The run directory is in use, holds another run's output, or lies inside/above another run."""

    exit_code = 5
    label = "run dir refused"


class StorageError(ProjectError):
    """The disk refused a write: no space left, a quota, or a read-only file system (the message names the
    path and the cause)."""

    exit_code = 6
    label = "storage error"

    ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
    """What a disk answers when it cannot take a write; any other OSError is not a storage error."""

    @classmethod
    def from_os_error(cls, err: BaseException, path: object, doing: str) -> StorageError | None:
        """A StorageError naming `path`, the cause (e.g. "No space left on device") and what was being done,
        when `err` is one; else None."""
        if not isinstance(err, OSError) or err.errno not in cls.ERRNOS:
            return None
        return cls(f"{path}: {err.strerror.lower()} while {doing}")


def report_and_exit(err: ProjectError, quiet: bool = False) -> NoReturn:
    """The one way a command ends on a ProjectError: `label: message` on stderr (unless quiet, e.g. on a
    rank other than 0), then exit with the class's code. No traceback."""
    if not quiet:
        print(f"{err.label}: {err}", file=sys.stderr, flush=True)
    sys.exit(err.exit_code)


def reports_errors(main: Callable[P, R]) -> Callable[P, R]:
    """Decorates a command's `main`: a ProjectError it raises ends the command by `report_and_exit`."""

    @functools.wraps(main)
    def command(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except ProjectError as err:
            report_and_exit(err)

    return command
