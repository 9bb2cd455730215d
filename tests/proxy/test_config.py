"""load_config: interpolation, path resolution and every cross-check's file/line/key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guard_engine.errors import ConfigFileError
from proxy.config import load_config
from proxy.config_schema import LiteLLMUpstreamConfig, OpenAIUpstreamConfig

BASE = """\
server: {host: 127.0.0.1, port: "${PORT:-8080}"}
auth:
  tenants:
    acme: {keys: ["${ACME_KEY}"]}
default_guard: "${GUARD:-local}"
guards:
  local: {type: embedded}
upstreams:
  openai: {type: openai, base_url: "${OPENAI_BASE_URL:-https://api.openai.com/v1}"}
  claude: {type: litellm, model: anthropic/claude-sonnet-4-5}
routes:
  - {name: kids, path_prefix: /kids/, upstream: openai, policy: policies/kids.yaml}
  - {name: acme, tenants: [acme], upstream: claude, policy: policies/default.yaml}
  - {name: default, upstream: openai, policy: policies/default.yaml}
audit: {path: audit/db.sqlite3}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    for name in ("kids.yaml", "default.yaml"):
        (tmp_path / "policies" / name).write_text("name: x\n")
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigFileError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as e:
        load_config(path, env={"ACME_KEY": "k"} if env is None else env)
    assert e.value.path == str(path)
    assert str(e.value).startswith(f"{path}:{e.value.line}: key '{e.value.key}':")
    return e.value


def test_loads_interpolates_and_resolves_paths(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    config = load_config(path, env={"ACME_KEY": "secret", "PORT": "9000"})
    assert config.server.port == 9000
    assert config.auth.tenants["acme"].keys == ["secret"]
    assert config.default_guard == "local"
    openai = config.upstreams["openai"]
    assert isinstance(openai, OpenAIUpstreamConfig)
    assert openai.base_url == "https://api.openai.com/v1"
    assert isinstance(config.upstreams["claude"], LiteLLMUpstreamConfig)
    assert [r.policy for r in config.routes] == [
        str(tmp_path / "policies" / "kids.yaml"),
        str(tmp_path / "policies" / "default.yaml"),
        str(tmp_path / "policies" / "default.yaml"),
    ]
    assert all(Path(r.policy).is_absolute() for r in config.routes)
    assert config.routes[0].path_prefix == "/kids"  # trailing slash normalised
    assert config.audit.path == str(tmp_path / "audit" / "db.sqlite3")


def test_default_used_when_variable_unset_or_empty(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    config = load_config(path, env={"ACME_KEY": "k", "PORT": "", "OPENAI_BASE_URL": "http://x/v1"})
    assert config.server.port == 8080
    openai = config.upstreams["openai"]
    assert isinstance(openai, OpenAIUpstreamConfig) and openai.base_url == "http://x/v1"


def test_env_none_reads_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_KEY", "from-env")
    config = load_config(write(tmp_path, BASE))
    assert config.auth.tenants["acme"].keys == ["from-env"]


def test_relative_config_path_still_gives_absolute_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, BASE)
    monkeypatch.chdir(tmp_path)
    config = load_config("config.yaml", env={"ACME_KEY": "k"})
    assert config.routes[0].policy == str(tmp_path / "policies" / "kids.yaml")


def test_unset_variable_names_line_and_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE, env={})
    assert (err.line, err.key) == (4, "auth.tenants.acme.keys[0]")
    assert "ACME_KEY" in str(err)


def test_unknown_upstream(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace("upstream: claude", "upstream: nope"))
    assert (err.line, err.key) == (13, "routes[1].upstream")
    assert "unknown upstream 'nope'" in str(err)


def test_unknown_default_guard(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE, env={"ACME_KEY": "k", "GUARD": "nemotron"})
    assert (err.line, err.key) == (5, "default_guard")
    assert "unknown guard 'nemotron'" in str(err)


def test_missing_policy_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace("policies/kids.yaml", "policies/gone.yaml"))
    assert (err.line, err.key) == (12, "routes[0].policy")
    assert "gone.yaml" in str(err)


def test_unknown_tenant_in_route(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace("tenants: [acme]", "tenants: [acme, globex]"))
    assert (err.line, err.key) == (13, "routes[1].tenants[1]")
    assert "globex" in str(err)


def test_duplicate_route_name(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace("name: default", "name: kids"))
    assert (err.line, err.key) == (14, "routes[2].name")
    assert "duplicate route name 'kids'" in str(err)


def test_prefix_must_start_with_slash(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace("path_prefix: /kids/", "path_prefix: kids"))
    assert (err.line, err.key) == (12, "routes[0].path_prefix")


def test_bad_hash_and_shared_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace('"${ACME_KEY}"', "sha256:abc"))
    assert (err.line, err.key) == (4, "auth.tenants.acme.keys[0]")
    shared = BASE.replace(
        '    acme: {keys: ["${ACME_KEY}"]}',
        '    acme: {keys: ["${ACME_KEY}"]}\n    globex: {keys: ["k"]}',
    )
    err = load_error(tmp_path, shared)
    assert (err.line, err.key) == (5, "auth.tenants.globex.keys[0]")
    assert "acme" in str(err)


def test_schema_error_and_unreadable_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, BASE.replace("guards:\n", "guards:\n  bogus: 1\n", 1) + "x: 1\n")
    assert err.line is not None and err.key is not None
    with pytest.raises(ConfigFileError) as e:
        load_config(tmp_path / "missing.yaml", env={})
    assert "cannot read file" in str(e.value)


def test_repository_config_loads() -> None:
    from guard_engine.policy.compile import load_policy

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "config.yaml", env={})
    assert [r.name for r in config.routes] == ["kids", "default"]
    assert config.server.host == "127.0.0.1" and config.server.admin_key == ""
    for route in config.routes:
        # What `guardline serve` checks before it binds: every route's policy compiles.
        policy = load_policy(route.policy, known_guards=list(config.guards))
        assert Path(route.policy).parent == root / "policies"
        assert policy.ref.startswith(Path(route.policy).stem + "@")
