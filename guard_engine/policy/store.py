"""PolicyStore: the set of compiled policies a server uses, hot-reloaded from their files.

Readers call `get(path)` on every request: it reads one attribute (an immutable dict that is
replaced, never mutated), so it needs no lock. Writers (the watcher and `reload`) parse in a
worker thread, because PyYAML takes tens of milliseconds, then build a new dict and swap it in
on the event loop; `reload_now` is the same step run synchronously (tests, tools). An edit
that does not validate leaves the last good version serving, is recorded in `errors()` (for
/readyz) and reported to `on_reload`.

The watcher compares file contents instead of trusting event paths: editors save through
temporary files and renames, and Kubernetes ConfigMaps swap a `..data` symlink, so an event
says only "something in this directory changed".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import watchfiles

from guard_engine.errors import ConfigFileError
from guard_engine.policy.compile import load_policy
from guard_engine.policy.compiled import CompiledPolicy

_log = logging.getLogger(__name__)

# (path, the new policy or None when rejected, the error message or None when accepted)
ReloadHook = Callable[[str, CompiledPolicy | None, str | None], None]


def policy_key(path: str | Path) -> str:
    """How the store names a file: absolute and normalized, symlinks kept (see module doc)."""
    return os.path.abspath(os.fspath(path))


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class _Staged:
    """A validated reload, not yet swapped in."""

    policy: CompiledPolicy
    new_shadows: dict[str, CompiledPolicy]  # shadows first named by this edit
    digests: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class _Rejected:
    """A reload that did not validate. The digests of what was read are kept all the same,
    or every later event in the directory would retry (and report) the same broken bytes."""

    error: str
    digests: dict[str, str | None]


class PolicyStore:
    """Compiled policies by file path, plus their shadows, kept current with the files."""

    def __init__(
        self,
        paths: Iterable[str | Path],
        *,
        known_guards: Collection[str] | None = None,
        on_reload: ReloadHook | None = None,
        rust_timeout_ms: int = 1000,
        force_polling: bool = False,
    ) -> None:
        """Load every file and its shadows; raises ConfigFileError on the first invalid one.

        A server must not start on a broken policy, so only later edits are tolerated.
        `force_polling` is for filesystems that send no change events (NFS, some container
        bind mounts); `rust_timeout_ms` bounds how long the watcher waits before checking
        for `close()` and, in polling mode, sets the poll interval.
        """
        self._known_guards = known_guards
        self._on_reload = on_reload
        self._rust_timeout_ms = rust_timeout_ms
        self._force_polling = force_polling
        self._policies: Mapping[str, CompiledPolicy] = MappingProxyType({})
        self._errors: Mapping[str, str] = MappingProxyType({})
        self._digests: dict[str, str | None] = {}
        self._stop = asyncio.Event()
        self._watching = asyncio.Event()
        # Paths as callers spell them (e.g. a route's `policies/x.yaml`) -> key, so that
        # `get` on the hot path does not normalize.
        self._aliases: dict[str, str] = {}
        loaded: dict[str, CompiledPolicy] = {}
        for path in paths:
            key = policy_key(path)
            self._aliases[os.fspath(path)] = key
            self._digests.update(self._load_with_shadows(key, loaded))
        self._aliases.update({k: k for k in loaded})
        self._policies = MappingProxyType(loaded)

    def _load_with_shadows(
        self, key: str, into: dict[str, CompiledPolicy]
    ) -> dict[str, str | None]:
        """Load `key` and its shadows not yet in `into`; returns the digests of what it read.

        Touches no attribute of the store, so that it can run in a worker thread.
        """
        digests: dict[str, str | None] = {}
        pending = [key]
        while pending:
            current = pending.pop()
            if current in into:
                continue  # already loaded, or a shadow cycle
            digests[current] = _digest(current)
            policy = load_policy(current, known_guards=self._known_guards)
            into[current] = policy
            if policy.shadow is not None:
                pending.append(policy.shadow)
        return digests

    # -- reading (any thread, lock-free) ------------------------------------------------

    def get(self, path: str | Path) -> CompiledPolicy:
        """The policy serving for `path`. KeyError when the file was never loaded."""
        key = self._aliases.get(path) if isinstance(path, str) else None
        policies = self._policies
        try:
            return policies[key if key is not None else policy_key(path)]
        except KeyError:
            raise KeyError(f"policy file not loaded: {path}") from None

    def policies(self) -> Mapping[str, CompiledPolicy]:
        """Every policy serving now, by absolute path (a read-only snapshot)."""
        return self._policies

    def errors(self) -> dict[str, str]:
        """Files whose latest edit was rejected, with the reason; empty when all are current."""
        return dict(self._errors)

    # -- reloading (event loop) ---------------------------------------------------------

    def reload_now(self, path: str | Path) -> CompiledPolicy | None:
        """Re-validate one file now. Returns the new policy, or None when the edit is rejected
        (the last good version keeps serving and `errors()` says why)."""
        key = self._key_of(path)
        return self._apply(key, self._prepare(key))

    async def reload(self, path: str | Path) -> CompiledPolicy | None:
        """`reload_now` with the reading and parsing in a worker thread: YAML parsing takes
        tens of milliseconds, too long to block the event loop that serves requests."""
        key = self._key_of(path)
        return self._apply(key, await asyncio.to_thread(self._prepare, key))

    def _key_of(self, path: str | Path) -> str:
        key = self._aliases.get(os.fspath(path)) or policy_key(path)
        if key not in self._policies:
            raise KeyError(f"policy file not loaded: {path}")
        return key

    def _prepare(self, key: str) -> _Staged | _Rejected:
        """Load the file (and any new shadow) against a snapshot; no store state changes."""
        snapshot = self._policies
        digests: dict[str, str | None] = {key: _digest(key)}
        try:
            policy = load_policy(key, known_guards=self._known_guards)
        except ConfigFileError as exc:
            return _Rejected(str(exc), digests)
        staged = dict(snapshot)
        staged[key] = policy
        if policy.shadow is not None and policy.shadow not in staged:
            try:
                digests.update(self._load_with_shadows(policy.shadow, staged))
            except ConfigFileError as exc:
                error = ConfigFileError(key, f"shadow policy is invalid: {exc}")
                return _Rejected(str(error), digests)
        added = {k: v for k, v in staged.items() if k not in snapshot}
        return _Staged(policy, added, digests)

    def _apply(self, key: str, outcome: _Staged | _Rejected) -> CompiledPolicy | None:
        """Swap in a prepared reload, or record its error (event loop only)."""
        self._digests.update(outcome.digests)
        if isinstance(outcome, _Rejected):
            self._errors = MappingProxyType({**self._errors, key: outcome.error})
            self._notify(key, None, outcome.error)
            return None
        self._aliases.update({k: k for k in outcome.new_shadows})
        # Only this file and its new shadows change: a reload applied since the snapshot was
        # taken is not undone.
        merged = {**self._policies, **outcome.new_shadows, key: outcome.policy}
        self._policies = MappingProxyType(merged)
        if key in self._errors:
            self._errors = MappingProxyType({k: v for k, v in self._errors.items() if k != key})
        self._notify(key, outcome.policy, None)
        return outcome.policy

    def _notify(self, key: str, policy: CompiledPolicy | None, error: str | None) -> None:
        if self._on_reload is not None:
            # A logging or metrics hook must never stop reloads.
            with contextlib.suppress(Exception):
                self._on_reload(key, policy, error)

    def _changed_in(self, dirs: set[str]) -> list[str]:
        """Loaded files in `dirs` whose bytes differ from the last version read."""
        changed = []
        for key in list(self._policies):
            if os.path.dirname(key) in dirs and _digest(key) != self._digests.get(key):
                changed.append(key)
        return changed

    async def _handle(
        self,
        changes: set[tuple[watchfiles.Change, str]],
        dirs: set[str],
        *,
        everything: bool = False,
    ) -> None:
        touched = dirs if everything else {os.path.dirname(p) for _, p in changes} & dirs
        if not touched:
            return
        for key in await asyncio.to_thread(self._changed_in, touched):
            await self.reload(key)

    def _watched_dirs(self) -> set[str]:
        return {os.path.dirname(k) for k in self._policies if os.path.isdir(os.path.dirname(k))}

    async def watch(self) -> None:
        """Reload files as they change, until `close()`. Run it as a task for the app's life.

        Restarts its watcher when a reload adds a shadow in a directory not yet watched, and
        falls back to polling when the OS refuses a watch (e.g. the inotify limit is reached).
        """
        polling = self._force_polling
        while not self._stop.is_set():
            dirs = self._watched_dirs()
            if not dirs:
                return
            try:
                await self._watch_dirs(dirs, polling=polling)
            except Exception as exc:  # watchfiles raises OSError or RuntimeError subclasses
                if polling:
                    raise
                _log.warning("policy watcher failed (%s); polling the files instead", exc)
                polling = True

    async def _watch_dirs(self, dirs: set[str], *, polling: bool) -> None:
        first = True
        async for changes in watchfiles.awatch(
            *sorted(dirs),
            watch_filter=None,
            stop_event=self._stop,
            recursive=False,
            rust_timeout=self._rust_timeout_ms,
            yield_on_timeout=True,
            force_polling=polling,
            poll_delay_ms=self._rust_timeout_ms,
        ):
            if first or polling:
                # First yield: the watch is installed now, so compare every file once and an
                # edit made between loading and this point is not missed. Polling: the poll
                # watcher compares modification times, which miss quick successive edits on
                # coarse-timestamp filesystems, so compare contents on every tick instead.
                await self._handle(set(), dirs, everything=True)
                if first:
                    first = False
                    self._watching.set()
            else:
                await self._handle(changes, dirs)
            if self._watched_dirs() != dirs:
                return

    async def wait_watching(self) -> None:
        """Return once `watch()` has its OS watches in place (edits after this are seen)."""
        await self._watching.wait()

    def close(self) -> None:
        """Stop `watch()` (it returns within a watcher step)."""
        self._stop.set()
