"""API keys: hashes only in the config, lookups, scopes, the keys file, the gate's
parsing of credentials, and what /stats shows (ids, never keys or hashes)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from lb.config import parse_config
from lb.edge.config import ApiKey, AuthConfig, RateLimit
from lb.edge.gate import CALL, HEALTH, METADATA, OTHER, STATUS, Edge, classify
from lb.edge.keys import KeyStore, load_keys
from lb.errors import ConfigError

NODE = [{"name": "a", "rest": "http://127.0.0.1:1"}]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(**sections: Any) -> Any:
    return parse_config({"nodes": NODE, **sections})


def test_keys_are_configured_as_hashes_never_plaintext() -> None:
    with pytest.raises(ConfigError) as err:
        config(auth={"keys": [{"id": "a", "sha256": "my-secret-key"}]})
    assert "auth.keys.0.sha256" in str(err.value) and "64 hex digits" in str(err.value)
    assert "my-secret-key" not in str(err.value)
    with pytest.raises(ConfigError, match="needs sha256 or subject"):
        config(auth={"keys": [{"id": "a"}]})
    with pytest.raises(ConfigError, match="duplicate key id 'a'"):
        config(auth={"keys": [{"id": "a", "sha256": digest("1")},
                              {"id": "a", "sha256": digest("2")}]})
    with pytest.raises(ConfigError, match="repeats a hash"):
        config(auth={"keys": [{"id": "a", "sha256": digest("1")},
                              {"id": "b", "sha256": [digest("2"), digest("1")]}]})
    cfg = config(auth={"keys": [{"id": "a", "sha256": digest("k").upper()}]})
    assert cfg.auth.keys[0].sha256 == [digest("k")]       # one or a list, lower-cased


def test_tls_sections_name_their_fields() -> None:
    with pytest.raises(ConfigError, match=r"listen.tls.require_client_cert: needs client_ca"):
        config(listen={"tls": {"cert": "c", "key": "k", "require_client_cert": True}})
    with pytest.raises(ConfigError, match=r"listen.tls.ciphers"):
        config(listen={"tls": {"cert": "c", "key": "k", "ciphers": "NO-SUCH-CIPHER"}})
    with pytest.raises(ConfigError, match=r"upstream.tls: cert and key go together"):
        config(upstream={"tls": {"cert": "c"}})
    with pytest.raises(ConfigError, match=r"rate_limit.redis_url"):
        config(rate_limit={"shared": "redis", "redis_url": "http://x"})
    with pytest.raises(ConfigError, match=r"auth.open.0"):
        config(auth={"open": ["predict"]})


def test_lookup_by_hash_and_subject() -> None:
    keys = [ApiKey(id="a", sha256=[digest("key-a"), digest("key-a2")], models=["m*"]),
            ApiKey(id="svc", subject="CN=svc,O=ml")]
    store = KeyStore(keys)
    assert store.by_key(b"key-a") is store.by_key(b"key-a2") is store.principals["a"]
    assert store.by_key(b"key-b") is None and store.by_key(b"") is None
    assert store.by_key(digest("key-a").encode()) is None    # the hash is not the key
    assert store.by_subject("CN=svc,O=ml") is store.principals["svc"]
    assert store.by_subject("CN=svc") is None and store.by_subject(None) is None


def test_scopes_are_globs_remembered_per_model() -> None:
    store = KeyStore([ApiKey(id="a", sha256=[digest("k")], models=["mnist", "half_*"])])
    p = store.principals["a"]
    assert p.may_call("mnist") and p.may_call("half_plus_two")
    assert not p.may_call("MNIST") and not p.may_call("mnist2") and not p.may_call("")
    assert p._scope == {"mnist": True, "half_plus_two": True, "MNIST": False,
                        "mnist2": False, "": False}


def test_a_reload_keeps_counters_and_budgets_by_id() -> None:
    limits = RateLimit(requests_per_s=1)
    first = KeyStore([ApiKey(id="a", sha256=[digest("k")], limits=limits)])
    budget = first.principals["a"].budget
    assert budget is not None and budget.take(0.0, 1) == 0.0          # a spent budget
    first.principals["a"].allowed = 7
    again = KeyStore([ApiKey(id="a", sha256=[digest("k2")], limits=limits),
                      ApiKey(id="b", sha256=[digest("b")])], first)
    assert again.principals["a"].allowed == 7 and again.principals["a"].budget is budget
    assert again.by_key(b"k") is None and again.by_key(b"k2") is again.principals["a"]
    assert again.principals["b"].allowed == 0
    other = KeyStore([ApiKey(id="a", sha256=[digest("k")],
                             limits=RateLimit(requests_per_s=5))], again)
    assert other.principals["a"].budget is not budget                 # new limits: new budget


def test_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"id": "f", "sha256": digest("file-key"),
                                              "models": ["x"]}]}))
    auth = AuthConfig(keys=[ApiKey(id="c", sha256=[digest("c")])], keys_file=str(path))
    assert [k.id for k in load_keys(auth)] == ["c", "f"]
    path.write_text(yaml.safe_dump({"keys": [{"id": "c", "sha256": digest("other")}]}))
    with pytest.raises(ConfigError, match="duplicate key id 'c'"):
        load_keys(auth)
    path.write_text(yaml.safe_dump({"keys": [{"id": "f", "sha256": "plaintext"}]}))
    with pytest.raises(ConfigError, match=r"keys.yaml: keys.0.sha256: .*64 hex") as err:
        load_keys(auth)
    assert "plaintext" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(AuthConfig(keys_file=str(tmp_path / "missing.yaml")))


def test_paths_are_classified() -> None:
    assert classify("/healthz")[0] == classify("/readyz")[0] == HEALTH
    assert classify("/v1/models/m:predict") == (CALL, "m", "predict")
    assert classify("/v1/models/m/versions/2:classify") == (CALL, "m", "classify")
    assert classify("/v1/models/m") == (STATUS, "m", None)
    assert classify("/v1/models/m/labels/stable") == (STATUS, "m", None)
    assert classify("/v1/models/m/metadata") == (METADATA, "m", None)
    assert classify("/nope")[0] == classify("/v1/models/m:explode")[0] == OTHER


@pytest.mark.parametrize(("raw", "token"), [
    (b"\x00Bearer abc", b"abc"), (b"\x00bearer  abc ", b"abc"), (b"abc", b"abc"),
    (b"\x00Basic abc", None), (b"\x00Bearer", None), (b"\x00Bearer ", None), (b"", None),
    (b"a b", None), (b"\x00Bearer a\tb", None), ("é".encode(), None), (b"x" * 513, None),
    (b"x" * 512, b"x" * 512),
])
def test_credentials_are_parsed_strictly(raw: bytes, token: bytes | None) -> None:
    edge = Edge(config(auth={"keys": []}))
    assert edge._token(raw) == token


def test_stats_name_ids_never_keys_or_hashes() -> None:
    secret = "s3cret-key-value"
    edge = Edge(config(auth={"keys": [{"id": "team-a", "sha256": digest(secret),
                                       "limits": {"requests_per_s": 5}}],
                             "open": ["health", "metadata"]}))
    doc = orjson.dumps(edge.stats()).decode()
    assert "team-a" in doc and secret not in doc and digest(secret) not in doc
    auth = edge.stats()["auth"]
    assert auth["open"] == ["health", "metadata"] and auth["keys"] == 1
    assert edge.stats()["rate_limit"] == {"shared": "local", "state": "local"}
    assert Edge(config()).stats()["auth"] == {"enabled": False}
