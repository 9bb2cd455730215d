"""Authenticator: open mode, plain and sha256 keys, missing and wrong keys -> 401."""

from __future__ import annotations

import hashlib

import pytest

from proxy.auth import Authenticator, key_digest
from proxy.config_schema import TenantConfig
from proxy.errors import Unauthorized


def auth(**tenants: list[str]) -> Authenticator:
    return Authenticator({name: TenantConfig(keys=keys) for name, keys in tenants.items()})


def test_open_mode_accepts_anything() -> None:
    a = auth()
    assert a.open
    assert a.authenticate(None) is None
    assert a.authenticate("Bearer sk-client-own-key") is None
    assert a.authenticate("garbage") is None


def test_plain_and_hashed_keys_map_to_tenants() -> None:
    digest = hashlib.sha256(b"globex-secret").hexdigest()
    a = auth(acme=["acme-1", "acme-2"], globex=[f"sha256:{digest.upper()}"])
    assert not a.open
    assert a.authenticate("Bearer acme-1") == "acme"
    assert a.authenticate("Bearer acme-2") == "acme"
    assert a.authenticate("bearer   globex-secret ") == "globex"


def test_stored_hash_is_not_itself_a_key() -> None:
    digest = hashlib.sha256(b"s").hexdigest()
    a = auth(acme=[f"sha256:{digest}"])
    with pytest.raises(Unauthorized):
        a.authenticate(f"Bearer sha256:{digest}")
    with pytest.raises(Unauthorized):
        a.authenticate(f"Bearer {digest}")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwdw==", "acme-1"]
)
def test_missing_bearer_token_is_401(header: str | None) -> None:
    with pytest.raises(Unauthorized) as e:
        auth(acme=["acme-1"]).authenticate(header)
    assert e.value.status == 401
    assert e.value.envelope()["error"]["code"] == "invalid_api_key"
    assert e.value.envelope()["error"]["type"] == "authentication_error"
    assert "Missing bearer token" in e.value.message


def test_wrong_key_is_401_without_echoing_it() -> None:
    with pytest.raises(Unauthorized) as e:
        auth(acme=["acme-1"]).authenticate("Bearer sk-wrong-key-123")
    assert e.value.status == 401
    assert e.value.message.startswith("Incorrect API key provided")
    assert "sk-wrong" not in e.value.message and "123" not in e.value.message


def test_empty_configured_keys_are_ignored() -> None:
    a = auth(acme=[""], globex=["g"])
    assert not a.open
    with pytest.raises(Unauthorized):
        a.authenticate("Bearer ")
    with pytest.raises(Unauthorized):
        a.authenticate("Bearer x")
    # A tenant whose only key is unset still closes the gateway rather than opening it.
    closed = auth(acme=[""])
    assert not closed.open
    with pytest.raises(Unauthorized):
        closed.authenticate("Bearer anything")


def test_key_digest_rejects_short_hash() -> None:
    with pytest.raises(ValueError):
        key_digest("sha256:abcd")
    with pytest.raises(ValueError):
        key_digest("sha256:" + "z" * 64)
