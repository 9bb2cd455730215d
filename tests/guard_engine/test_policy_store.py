"""PolicyStore: loading with shadows, atomic swaps, rejected edits, and the real file watcher."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from guard_engine.errors import ConfigFileError
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.policy.store import PolicyStore

Event = tuple[str, CompiledPolicy | None, str | None]


def policy_text(name: str, *, mode: str = "categories", extra: str = "") -> str:
    return f"name: {name}\ndescription: test policy\nmode: {mode}\n{extra}"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    main = tmp_path / "main.yaml"
    shadow = tmp_path / "candidate.yaml"
    shadow.write_text(policy_text("candidate", mode="binary"))
    main.write_text(policy_text("main", extra="shadow: candidate.yaml\n"))
    return main, shadow


def test_loads_files_and_their_shadows(files: tuple[Path, Path], tmp_path: Path) -> None:
    main, shadow = files
    store = PolicyStore([main])
    policy = store.get(main)
    assert policy.name == "main" and policy.shadow == str(shadow)
    assert store.get(policy.shadow).name == "candidate"
    assert store.get(str(main)) is policy
    assert set(store.policies()) == {str(main), str(shadow)}
    assert store.errors() == {}


def test_relative_paths_are_served_under_the_spelling_used(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    store = PolicyStore(["main.yaml"])
    assert store.get("main.yaml") is store.get(tmp_path / "main.yaml")
    with pytest.raises(KeyError, match="not loaded"):
        store.get("other.yaml")


def test_an_invalid_file_at_start_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndescription: y\nmoed: binary\n")
    with pytest.raises(ConfigFileError) as info:
        PolicyStore([bad])
    assert (info.value.line, info.value.key) == (3, "moed")


def test_unknown_guard_is_rejected_when_guards_are_known(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(policy_text("p", extra="guard: gpu\n"))
    with pytest.raises(ConfigFileError, match="unknown guard 'gpu'"):
        PolicyStore([p], known_guards={"local"})


def test_valid_edit_swaps_and_invalid_edit_keeps_the_last_good(files: tuple[Path, Path]) -> None:
    main, _ = files
    events: list[Event] = []
    store = PolicyStore([main], on_reload=lambda *e: events.append(e))
    before = store.get(main)
    snapshot = store.policies()

    main.write_text(policy_text("main", mode="think", extra="shadow: candidate.yaml\n"))
    after = store.reload_now(main)
    assert after is not None and store.get(main) is after
    assert after.mode == "think" and after.hash8 != before.hash8
    assert snapshot[str(main)] is before  # readers holding the old snapshot are unaffected
    assert events == [(str(main), after, None)]

    main.write_text(policy_text("main", extra="threshold: 2\n"))
    assert store.reload_now(main) is None
    assert store.get(main) is after
    errors = store.errors()
    assert list(errors) == [str(main)] and ":4: key 'threshold':" in errors[str(main)]
    assert events[-1][:2] == (str(main), None) and events[-1][2] == errors[str(main)]

    main.write_text(policy_text("main", mode="binary"))
    fixed = store.reload_now(main)
    assert fixed is not None and fixed.mode == "binary" and store.errors() == {}


async def test_async_reload_parses_off_the_loop_and_skips_unchanged_bytes(
    files: tuple[Path, Path],
) -> None:
    main, _ = files
    store = PolicyStore([main])
    main.write_text(policy_text("main", extra="bogus: 1\n"))
    assert await store.reload(main) is None
    # The rejected bytes are remembered: the watcher does not retry them on every event.
    assert store._changed_in({str(main.parent)}) == []
    main.write_text(policy_text("main", mode="binary"))
    assert store._changed_in({str(main.parent)}) == [str(main)]
    policy = await store.reload(main)
    assert policy is not None and policy.mode == "binary" and store.errors() == {}


def test_deleted_file_keeps_serving_and_is_reported(files: tuple[Path, Path]) -> None:
    main, _ = files
    store = PolicyStore([main])
    before = store.get(main)
    main.unlink()
    assert store.reload_now(main) is None
    assert store.get(main) is before
    assert "cannot read file" in store.errors()[str(main)]


def test_edit_adding_a_shadow_loads_it_and_a_bad_shadow_rejects_the_edit(tmp_path: Path) -> None:
    main = tmp_path / "main.yaml"
    main.write_text(policy_text("main"))
    store = PolicyStore([main])
    other = tmp_path / "other.yaml"
    other.write_text(policy_text("other", extra="bogus: 1\n"))
    main.write_text(policy_text("main", extra="shadow: other.yaml\n"))
    assert store.reload_now(main) is None
    assert "shadow policy is invalid" in store.errors()[str(main)]
    other.write_text(policy_text("other"))
    assert store.reload_now(main) is not None
    assert store.get(str(other)).name == "other"


def test_a_failing_hook_does_not_stop_reloads(files: tuple[Path, Path]) -> None:
    main, _ = files

    def hook(path: str, policy: CompiledPolicy | None, error: str | None) -> None:
        raise RuntimeError("metrics exporter down")

    store = PolicyStore([main], on_reload=hook)
    assert store.reload_now(main) is not None


def test_shadow_cycles_terminate(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(policy_text("a", extra="shadow: b.yaml\n"))
    b.write_text(policy_text("b", extra="shadow: a.yaml\n"))
    store = PolicyStore([a])
    assert {p.name for p in store.policies().values()} == {"a", "b"}


async def _next_event(queue: asyncio.Queue[Event], path: Path, text: str) -> Event:
    # Write atomically (a plain write can be seen half-done: truncated, then filled), then
    # wait for the watcher to report it. The bound only stops a hung test; nothing here
    # asserts on timing.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return await asyncio.wait_for(queue.get(), timeout=30)


async def test_watcher_hot_reloads_edits_and_survives_bad_ones(files: tuple[Path, Path]) -> None:
    main, shadow = files
    queue: asyncio.Queue[Event] = asyncio.Queue()
    store = PolicyStore([main], on_reload=lambda *e: queue.put_nowait(e), rust_timeout_ms=100)
    task = asyncio.create_task(store.watch())
    try:
        await asyncio.wait_for(store.wait_watching(), timeout=30)

        path, policy, error = await _next_event(
            queue, main, policy_text("main", mode="think", extra="shadow: candidate.yaml\n")
        )
        assert (path, error) == (str(main), None)
        assert policy is not None and store.get(main) is policy and policy.mode == "think"

        path, policy, error = await _next_event(queue, main, "name: main\n  broken: [\n")
        assert policy is None and error is not None and "invalid YAML" in error
        assert store.get(main).mode == "think" and str(main) in store.errors()

        # The shadow, in the same directory, is watched as well.
        path, policy, error = await _next_event(
            queue, shadow, policy_text("candidate", mode="think")
        )
        assert path == str(shadow) and policy is not None and policy.mode == "think"
    finally:
        store.close()
        await asyncio.wait_for(task, timeout=30)
    assert task.done() and task.exception() is None


async def test_close_before_watch_returns_at_once(files: tuple[Path, Path]) -> None:
    store = PolicyStore([files[0]])
    store.close()
    await asyncio.wait_for(store.watch(), timeout=30)


async def test_watcher_follows_a_kubernetes_configmap_symlink_swap(tmp_path: Path) -> None:
    # A ConfigMap volume: main.yaml -> ..data/main.yaml, ..data -> ..v1; an update writes ..v2
    # and renames a new ..data symlink over the old one. No event names main.yaml itself.
    for version, mode in (("..v1", "binary"), ("..v2", "think")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "main.yaml").write_text(policy_text("main", mode=mode))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "main.yaml").symlink_to("..data/main.yaml")
    queue: asyncio.Queue[Event] = asyncio.Queue()
    store = PolicyStore(
        [tmp_path / "main.yaml"], on_reload=lambda *e: queue.put_nowait(e), rust_timeout_ms=100
    )
    assert store.get(tmp_path / "main.yaml").mode == "binary"
    task = asyncio.create_task(store.watch())
    try:
        await asyncio.wait_for(store.wait_watching(), timeout=30)
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        path, policy, error = await asyncio.wait_for(queue.get(), timeout=30)
        assert path == str(tmp_path / "main.yaml") and error is None
        assert policy is not None and policy.mode == "think"
    finally:
        store.close()
        await asyncio.wait_for(task, timeout=30)


async def test_edit_between_load_and_watch_start_is_not_missed(files: tuple[Path, Path]) -> None:
    main, _ = files
    queue: asyncio.Queue[Event] = asyncio.Queue()
    store = PolicyStore([main], on_reload=lambda *e: queue.put_nowait(e), rust_timeout_ms=100)
    main.write_text(policy_text("main", mode="binary"))  # before any OS watch exists
    task = asyncio.create_task(store.watch())
    try:
        path, policy, _ = await asyncio.wait_for(queue.get(), timeout=30)
        assert path == str(main) and policy is not None and policy.mode == "binary"
    finally:
        store.close()
        await asyncio.wait_for(task, timeout=30)


async def test_polling_mode_for_filesystems_without_events(files: tuple[Path, Path]) -> None:
    main, _ = files
    queue: asyncio.Queue[Event] = asyncio.Queue()
    store = PolicyStore(
        [main], on_reload=lambda *e: queue.put_nowait(e), rust_timeout_ms=100, force_polling=True
    )
    task = asyncio.create_task(store.watch())
    try:
        await asyncio.wait_for(store.wait_watching(), timeout=30)
        path, policy, _ = await _next_event(queue, main, policy_text("main", mode="think"))
        assert path == str(main) and policy is not None and policy.mode == "think"
    finally:
        store.close()
        await asyncio.wait_for(task, timeout=30)
