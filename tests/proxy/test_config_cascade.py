"""`type: cascade` in config.yaml: what loads, every refusal's file/line/key, the backend built
from it, and `guardline policy show --config` naming the head a policy uses."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from guard_engine.backends.cascade import CascadeBackend
from guard_engine.backends.distilled_head import Thresholds
from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS
from guard_engine.errors import ConfigFileError
from proxy.cli import main as guardline
from proxy.config import load_config
from proxy.config_schema import CascadeGuardConfig
from proxy.guards import build_backends
from tests.factories import make_head_file

CONFIG = """\
default_guard: shop
guards:
  nemotron: {type: sglang, base_url: "http://127.0.0.1:9"}
  local: {type: embedded}
  shop:
    type: cascade
    head: heads/shop.npz
    guard: GUARD
    recheck_sample: 0.5
    drift: {min_rechecks: 10, window: 20, max_disagreement: 0.1}
upstreams:
  openai: {type: openai}
routes:
  - {name: default, upstream: openai, policy: main.yaml}
"""


def write(tmp_path: Path, guard: str = "nemotron", head: bool = True) -> Path:
    (tmp_path / "heads").mkdir(exist_ok=True)
    if head:
        make_head_file(
            tmp_path / "heads" / "shop.npz",
            prompt=Thresholds(0.1, 0.95),
            response=Thresholds(0.001, 0.999),
        )
    (tmp_path / "main.yaml").write_text("name: main\ndescription: the shop\n")
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG).replace("GUARD", guard))
    return path


def load_error(path: Path) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as e:
        load_config(path, env={})
    return e.value


async def test_a_cascade_loads_and_wraps_the_model_guard_it_names(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), env={})
    shop = config.guards["shop"]
    assert isinstance(shop, CascadeGuardConfig)
    assert shop.head == str(tmp_path / "heads" / "shop.npz")  # relative to the config file
    assert (shop.recheck_sample, shop.drift.window) == (0.5, 20)
    backends = build_backends(config)
    try:
        cascade = backends["shop"]
        assert isinstance(cascade, CascadeBackend)
        assert cascade.model_guard is backends["nemotron"]  # shared, not a second client
        assert cascade.describe()["thresholds"]["input"] == {"low": 0.1, "high": 0.95}
    finally:
        for backend in {id(b): b for b in backends.values()}.values():
            await backend.aclose()


@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ("gpu", "unknown guard 'gpu' (known: local, nemotron, shop)"),
        ("local", "guard 'local' is embedded: a cascade needs a model guard (type: sglang)"),
        ("shop", "guard 'shop' is cascade: a cascade needs a model guard"),
    ],
)
def test_the_model_guard_must_be_a_model_guard(tmp_path: Path, guard: str, message: str) -> None:
    error = load_error(write(tmp_path, guard=guard))
    assert (error.key, error.line) == ("guards.shop.guard", 8)
    assert message in error.detail


def test_a_head_that_does_not_load_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, head=False)
    head = tmp_path / "heads" / "shop.npz"
    error = load_error(path)
    assert (error.key, error.line) == ("guards.shop.head", 7)
    assert f"head file {head} does not load" in error.detail
    shutil.copy(DEFAULT_WEIGHTS, head)  # plain embedded weights: no distill metadata
    assert "not a distilled head file" in load_error(path).detail
    head.write_bytes(b"not a zip at all")
    assert f"head file {head} does not load" in load_error(path).detail


def test_drift_settings_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace("min_rechecks: 10", "min_rechecks: 30"))
    assert "min_rechecks must not exceed window" in str(load_error(path))


def test_policy_show_names_the_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path)
    policy = str(tmp_path / "main.yaml")
    assert guardline(["policy", "show", policy, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "resolved guard: shop (cascade; model guard nemotron)" in out
    assert f"head: {tmp_path / 'heads' / 'shop.npz'}  fingerprint " in out
    assert "distilled from test@0123abcd, created 2026-11-29T12:00:00.000Z" in out
    assert "thresholds input low 0.1 high 0.95, output low 0.001 high 0.999" in out
    assert guardline(["policy", "show", "--json", policy, "--config", str(config)]) == 0
    assert '"fingerprint"' in capsys.readouterr().out
    (tmp_path / "heads" / "shop.npz").unlink()
    assert guardline(["policy", "show", policy, "--config", str(config)]) == 1
    assert "key 'guards.shop.head': head file" in capsys.readouterr().err
