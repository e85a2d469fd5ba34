"""Credentials inside URLs (`s3://KEY:SECRET@bucket/x`, `https://user:token@host/...`): found, refused,
redacted.

Every command refuses a credential URL on its command line or in its composed config before doing any
work, with a message that names the key but not the secret: credentials go in the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS), which no output records.
`redact` is applied where a command line or a config becomes text (the run dir's .lock, launch.json; every
line `python -m launch` prints or logs goes through `RedactedStream`), so a secret that slipped past still
never reaches a file or a log.

The userinfo part runs from `scheme://` to the last `@` of the same whitespace-free token: an AWS secret may
hold `/`, which would end a URL's host part early for `urllib.parse`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TextIO

from errors import ConfigError

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*\\?:/+)[^\s'\"]*@")
"""`scheme:/...@` too: a URL passed through pathlib.Path loses one slash of `://`;
`scheme\\://...@` too: Hydra escapes `:` in the override values it prints (a sweep's trials)."""
REDACTED = "***"


class CredentialInConfig(ConfigError):
    """A URL with a user name or password in a command's arguments or config."""


def has_credential(text: str) -> bool:
    """True when `text` holds a URL with a user or password part (`scheme://...@`)."""
    return _USERINFO.search(text) is not None


def redact(text: str) -> str:
    """`text` with every URL's user/password part replaced by `***` (`s3://***@bucket/x`)."""
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


class RedactedStream:
    """A text stream (sys.stdout, sys.stderr) whose writes pass through `redact`: installed by a command
    whose every message must be redacted, Hydra's and libraries' included. A URL split over two writes is
    not seen; print writes a message in one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def __getattr__(self, name: str) -> object:  # flush, buffer, fileno, isatty, ...: the stream's own
        return getattr(self.stream, name)


def _refusal(where: str) -> CredentialInConfig:
    return CredentialInConfig(
        f"{where} holds a URL with credentials (scheme://{REDACTED}@...): they would reach logs, the run "
        "dir and saved configs. Remove them from the URL and set them in the environment instead "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://)"
    )


def refuse_in_args(args: Sequence[str]) -> None:
    """Raises CredentialInConfig naming the first argument (its key, for `key=value`) holding a credential."""
    for arg in args:
        if has_credential(arg):
            key, sep, _ = arg.partition("=")
            where = f"the override {key}=" if sep and not has_credential(key) else "an argument"
            raise _refusal(where)


def _strings(node: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, Iterable) and not isinstance(node, str | bytes):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def refuse_in_config(config: Mapping) -> None:
    """Raises CredentialInConfig naming the first key of `config` (a plain nested dict, e.g.
    OmegaConf.to_container(cfg, resolve=True)) whose value holds a credential URL."""
    for key, value in _strings(config, ""):
        if has_credential(value):
            raise _refusal(f"config key {key}")
