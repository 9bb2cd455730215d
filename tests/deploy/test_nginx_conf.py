"""deploy/nginx.conf passes the real `nginx -t`, and a broken copy does not."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.nginx_server import DEPLOY_CONF, check_config, render

PORTS = [18081, 18082, 18083]


def test_the_deployed_config_passes_nginx_t(tmp_path: Path) -> None:
    result = check_config(tmp_path, render(DEPLOY_CONF.read_text(), PORTS, 18080))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_a_broken_config_fails_nginx_t(tmp_path: Path) -> None:
    text = render(DEPLOY_CONF.read_text(), PORTS, 18080)
    broken = text.replace("proxy_next_upstream error timeout;", "proxy_next_upstream sometimes;")
    assert broken != text
    result = check_config(tmp_path, broken)
    assert result.returncode != 0
    assert 'invalid value "sometimes"' in result.stderr


def test_rendering_points_every_replica_line_at_a_local_port() -> None:
    text = render(DEPLOY_CONF.read_text(), PORTS, 18080)
    assert "gateway-" not in text
    for port in PORTS:
        assert f"server 127.0.0.1:{port} " in text
    assert "listen 127.0.0.1:18080;" in text
