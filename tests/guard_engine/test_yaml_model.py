import pytest
from pydantic import BaseModel, ConfigDict

from guard_engine.errors import ConfigFileError
from guard_engine.yaml_model import load_yaml_text, validate


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    port: int = 1
    inner: Inner = Inner()
    items: list[Inner] = []


def load(text: str, env: dict[str, str] | None = None) -> Outer:
    data, lines = load_yaml_text(text, path="f.yaml", env=env if env is not None else {})
    return validate(Outer, data, path="f.yaml", lines=lines)


def test_interpolation_with_default_becomes_typed() -> None:
    assert load("name: x\nport: ${PORT:-8080}\n").port == 8080
    assert load("name: ${N}\n", {"N": "svc"}).name == "svc"


def test_unset_variable_without_default_names_line_and_key() -> None:
    with pytest.raises(ConfigFileError) as e:
        load("name: x\ninner:\n  enabled: ${FLAG}\n")
    assert str(e.value) == "f.yaml:3: key 'inner.enabled': environment variable FLAG is not set"


def test_unknown_key_names_file_line_and_key() -> None:
    with pytest.raises(ConfigFileError) as e:
        load("name: x\ninner:\n  enabled: true\n  bogus: 1\n")
    assert (e.value.line, e.value.key) == (4, "inner.bogus")
    assert "unknown key" in str(e.value)


def test_wrong_type_in_list_item() -> None:
    with pytest.raises(ConfigFileError) as e:
        load("name: x\nitems:\n  - enabled: true\n  - enabled: maybe\n")
    assert (e.value.line, e.value.key) == (4, "items[1].enabled")


def test_invalid_yaml_and_duplicate_key() -> None:
    with pytest.raises(ConfigFileError) as e:
        load("name: [x\n")
    assert e.value.path == "f.yaml" and "invalid YAML" in str(e.value)
    with pytest.raises(ConfigFileError) as e:
        load("name: x\nname: y\n")
    assert e.value.line == 2
