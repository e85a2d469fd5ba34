"""The errors every command reports the same way: one line, and the exit code of the error's class.

This package sits below every other one (model, data, train, infer, launch and conf may all import it) and
imports nothing of the project, so a package raises the project's errors without importing the layer that
reports them. A command catches `ProjectError` once, prints `f"{err.label}: {err}"` and exits `err.exit_code`.
"""

from __future__ import annotations


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
