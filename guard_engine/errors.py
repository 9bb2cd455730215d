"""Errors raised by guard_engine.

    GuardEngineError
    ├── ConfigFileError          a YAML file (policy or config) is invalid: file, line, key
    ├── ImageError               an image cannot be accepted (undecodable, too large, forbidden URL)
    └── GuardError               the guard could not produce a verdict
        ├── GuardTimeout         the deadline passed
        ├── GuardUnavailable     connection refused, 5xx, 429 after retries, circuit open
        └── GuardUnparseable     the guard answered, but not in the adapter's format

A guard failure is never a verdict: callers decide per policy (`on_guard_error`) what it means.
"""

from __future__ import annotations


class GuardEngineError(Exception):
    """Base of every error guard_engine raises on purpose."""


class ConfigFileError(GuardEngineError):
    """A YAML configuration or policy file is invalid.

    The message always names the file, the line (when known) and the key path.
    """

    def __init__(self, path: str, message: str, *, line: int | None = None, key: str | None = None):
        self.path = path
        self.line = line
        self.key = key
        self.detail = message
        where = path if line is None else f"{path}:{line}"
        what = f" key '{key}':" if key else ""
        super().__init__(f"{where}:{what} {message}")


class ImageError(GuardEngineError):
    """An image in a request cannot be checked. `param` names where it was in the request."""

    def __init__(self, message: str, *, param: str | None = None):
        self.param = param
        super().__init__(message)


class GuardError(GuardEngineError):
    """The guard gave no usable verdict. `guard` names the configured guard."""

    reason = "guard_error"

    def __init__(self, message: str, *, guard: str = "", raw: str | None = None):
        self.guard = guard
        self.raw = raw
        super().__init__(message)


class GuardTimeout(GuardError):
    reason = "timeout"


class GuardUnavailable(GuardError):
    reason = "unavailable"


class GuardUnparseable(GuardError):
    reason = "unparseable"
