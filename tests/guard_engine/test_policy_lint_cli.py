"""`guardline policy lint` and `guardline policy show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.cli import main as guardline


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_lint_prints_ok_lines_and_errors_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "good.yaml", "name: good\ndescription: fine\n")
    bad = write(tmp_path / "bad.yaml", "name: bad\ndescription: x\noutput:\n  stream: later\n")
    assert guardline(["policy", "lint", good, bad]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"OK  {good}  good@") and len(out[0].split("@")[1]) == 8
    assert out[1].startswith(f"{bad}:4: key 'output.stream': ")
    assert guardline(["policy", "lint", good]) == 0


def test_lint_checks_guard_names_only_when_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = write(tmp_path / "p.yaml", "name: p\ndescription: d\nguard: gpu\n")
    assert guardline(["policy", "lint", p]) == 0
    assert guardline(["policy", "lint", "--guards", "local,nemotron", p]) == 1
    assert f"{p}:3: key 'guard': unknown guard 'gpu'" in capsys.readouterr().out


def test_lint_without_paths_and_without_policies_dir_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert guardline(["policy", "lint"]) == 1
    assert "none found" in capsys.readouterr().err


def test_show_prints_the_compiled_texts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(
        tmp_path / "p.yaml",
        "name: p\ndescription: d\npolicy: No dating advice.\ncategories: {suppress: [Violence]}\n",
    )
    assert guardline(["policy", "show", p]) == 0
    out = capsys.readouterr().out
    assert "No dating advice." in out and "S2: Sexual." in out and "S1: Violence." not in out
    assert guardline(["policy", "show", "--json", p]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "p" and data["suppressed"] == ["Violence"]
    assert guardline(["policy", "show", str(tmp_path / "missing.yaml")]) == 1


def test_lint_takes_guard_names_from_a_config_without_its_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path / "config.yaml",
        "guards:\n  gpu: {type: sglang, base_url: '${GUARD_URL}'}\n"
        "upstreams: {o: {type: openai}}\nroutes: [{upstream: o, name: r, policy: p.yaml}]\n",
    )
    ok = write(tmp_path / "ok.yaml", "name: ok\ndescription: d\nguard: gpu\n")
    bad = write(tmp_path / "bad.yaml", "name: bad\ndescription: d\nguard: local\n")
    assert guardline(["policy", "lint", "--config", config, ok]) == 0
    assert guardline(["policy", "lint", "--config", config, bad]) == 1
    assert "unknown guard 'local'; known guards: gpu" in capsys.readouterr().out
    # Without a `guards:` section the config has the built-in embedded guard `local`.
    plain = write(tmp_path / "plain.yaml", "upstreams: {o: {type: openai}}\n")
    assert guardline(["policy", "lint", "--config", plain, bad]) == 0
    assert guardline(["policy", "lint", "--config", str(tmp_path / "nope.yaml"), ok]) == 1
