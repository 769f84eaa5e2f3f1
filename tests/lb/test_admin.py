"""Admin port security: loopback by default, bearer token on mutating endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lb.config import parse_config, split_hostport
from lb.errors import ConfigError
from tests.lb.conftest import Pool
from tests.procs import ProxyProc, http, node, read_config, rewrite_config

TOKEN = "s3cret-admin-token"
NODES = [{"name": "a", "rest": "http://127.0.0.1:1"}]


def test_admin_listens_on_loopback_by_default() -> None:
    cfg = parse_config({"nodes": NODES})
    assert split_hostport(cfg.listen.admin)[0] == "127.0.0.1"
    assert cfg.admin.token is None


@pytest.mark.parametrize(("token", "words"), [("short", "at least 8"),
                                              ("has a space", "pattern")])
def test_bad_tokens_name_the_field(token: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"nodes": NODES, "admin": {"token": token}}, "lb.yaml")
    assert "lb.yaml: admin.token:" in str(err.value) and words in str(err.value)


def _reload(admin: str, auth: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": auth} if auth is not None else {}
    status, _, body = http("POST", f"{admin}/reload", b"", headers)
    return status, json.loads(body)


def test_reload_requires_the_token(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[2])], name="proxy-admin",
                  admin={"token": TOKEN}, reload={"watch": False})
    try:
        assert _reload(p.admin, None)[0] == 401
        assert _reload(p.admin, "Bearer wrong-token-123")[0] == 401
        assert _reload(p.admin, f"Basic {TOKEN}")[0] == 401
        status, doc = _reload(p.admin, f"Bearer {TOKEN}")
        assert status == 200 and doc["reloaded"] is True
        # Reads stay open; nothing was reloaded by the refused calls.
        assert http("GET", f"{p.admin}/stats")[0] == 200
        assert http("GET", f"{p.admin}/metrics")[0] == 200
        assert p.stats()["config"]["reloads"] == 1
        # The token is live config: a reload rotates it.
        doc = read_config(p.config_path)
        doc["admin"] = {"token": TOKEN + "-v2"}
        rewrite_config(p.config_path, doc)
        assert _reload(p.admin, f"Bearer {TOKEN}")[0] == 200
        assert _reload(p.admin, f"Bearer {TOKEN}")[0] == 401
        assert _reload(p.admin, f"Bearer {TOKEN}-v2")[0] == 200
    finally:
        p.stop()


def test_reload_is_open_without_a_token(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[2])], name="proxy-admin-open",
                  reload={"watch": False})
    try:
        status, doc = _reload(p.admin, None)
        assert status == 200 and doc["reloaded"] is True and doc["changes"] == "no node changes"
    finally:
        p.stop()


def test_dashboard_page_reads_stats(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0])], name="proxy-dashboard")
    try:
        status, headers, body = http("GET", f"{p.admin}/dashboard")
        page = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert 'fetch("stats"' in page and "<table" in page
        assert "http://" not in page and "https://" not in page     # no external assets
    finally:
        p.stop()
