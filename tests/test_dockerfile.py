"""Static checks of the Dockerfile and .dockerignore (no Docker engine on the test machines).

They pin the parts other things rely on: the build context holds every path the Dockerfile
copies, the image runs as a non-root user, serves `guardline serve` on 0.0.0.0:8080 with the
baked-in config, and its HEALTHCHECK needs nothing but the Python standard library.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def _ignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def test_base_image_is_python_311_slim() -> None:
    assert _instructions()[0] == ("FROM", "python:3.11-slim")


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    copies = [shlex.split(args) for keyword, args in _instructions() if keyword == "COPY"]
    assert copies
    sources = [source for args in copies for source in args[:-1]]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source), f"{source} is excluded by .dockerignore"
    for needed in ("pyproject.toml", "README.md", "proxy", "guard_engine"):
        assert needed in sources
    assert {"config.yaml", "policies"} <= set(sources)


def test_dev_only_trees_stay_out_of_the_build_context() -> None:
    for path in (".venv", ".git", "tests", "benchmarks", "proxy/__pycache__"):
        assert _ignored(path), path


def test_installs_the_package_without_dev_extras() -> None:
    runs = " ".join(args for keyword, args in _instructions() if keyword == "RUN")
    assert "pip install" in runs
    assert "[dev]" not in runs and "dev" not in runs.split("pip install", 1)[1].split("&&")[0]


def test_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _instructions() if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_serves_on_8080_with_the_baked_config() -> None:
    instructions = _instructions()
    assert ("EXPOSE", "8080") in instructions
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == [
        "guardline", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0",
    ]  # fmt: skip


def test_healthcheck_probes_healthz_with_the_standard_library() -> None:
    healthcheck = [args for keyword, args in _instructions() if keyword == "HEALTHCHECK"][-1]
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    code = command[2]
    assert "/healthz" in code and "urllib.request" in code and "curl" not in healthcheck
    compile(code, "<healthcheck>", "exec")  # valid Python
