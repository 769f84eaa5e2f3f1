"""Config validation: every problem is reported with file and field; CLI exit codes."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from harness.certs import CA
from lb.config import Config, load_config, parse_config
from lb.errors import ConfigError

GOOD = """
listen: {rest: "127.0.0.1:8501", grpc: "127.0.0.1:8500", admin: "127.0.0.1:9901"}
nodes:
  - {name: tf-a, rest: "http://10.0.0.5:8501", grpc: "10.0.0.5:8500", weight: 3}
  - {name: tf-b, rest: "http://10.0.0.6:8501", grpc: "10.0.0.6:8500", weight: 1}
models:
  mnist: {cost: 1.0, row_cache: true}
policy: {name: least_load, tau_relax_s: 10, window_s: 10}
cache: {backend: memory, redis_url: "redis://127.0.0.1:6379/0", ttl_s: 3600, memory_mb: 64}
"""


def test_design_example_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert [n.name for n in cfg.nodes] == ["tf-a", "tf-b"]
    assert cfg.nodes[0].weight == 3.0
    assert cfg.model("mnist").row_cache is True
    assert cfg.model("other").cost == 1.0          # unlisted models get defaults
    assert cfg.upstream.pool_size != 100           # sized explicitly, not aiohttp's default


@pytest.mark.parametrize(("doc", "field", "words"), [
    ({"nodes": []}, "nodes", "at least 1"),
    ({"nodes": [{"name": "a", "rest": "http://h:1", "weight": 0}]},
     "nodes.0.weight", "greater than 0"),
    ({"nodes": [{"name": "a", "rest": "http://h:1", "wieght": 2}]},
     "nodes.0.wieght", "Extra inputs"),
    ({"nodes": [{"name": "a", "rest": "h:1"}]}, "nodes.0.rest", "http://host:port"),
    ({"nodes": [{"name": "a", "rest": "http://h:1", "grpc": "h"}]}, "nodes.0.grpc", "host:port"),
    ({"nodes": [{"rest": "http://h:1"}]}, "nodes.0.name", "Field required"),
    ({"nodes": [{"name": "a", "rest": "http://h:1"}], "policy": {"name": "random"}},
     "policy.name", "least_load"),
    ({"nodes": [{"name": "a", "rest": "http://h:1"}], "cache": {"redis_url": "http://x"}},
     "cache.redis_url", "redis://"),
    ({"nodes": [{"name": "a", "rest": "http://h:1"}], "listen": {"rest": "8501"}},
     "listen.rest", "host:port"),
    ({"nodes": [{"name": "a", "rest": "http://h:1"}, {"name": "a", "rest": "http://h:2"}]},
     "duplicate", "'a'"),
    ({"nodes": [{"name": "a", "rest": "http://h:1"}],
      "listen": {"rest": "0.0.0.0:8501", "grpc": "0.0.0.0:8501"}},
     "listen.grpc", "port 8501 is already used by listen.rest"),
])
def test_errors_name_file_and_field(doc: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "my.yaml")
    msg = str(info.value)
    assert msg.startswith("my.yaml: ") and field in msg and words in msg, msg


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"nodes": [{"name": "a", "rest": "x", "weight": -1}],
                      "cache": {"backend": "memcached"}}, "f.yaml")
    lines = str(info.value).splitlines()
    assert {ln.split(": ")[1] for ln in lines} == {"nodes.0.rest", "nodes.0.weight",
                                                   "cache.backend"}


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_check_config_cli(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text("nodes:\n  - {name: a, rest: 'http://h:1', weight: 0}\n")
    ok = subprocess.run([sys.executable, "-m", "lb", "check-config", str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run([sys.executable, "-m", "lb", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert fail.returncode != 0
    assert f"{bad}: nodes.0.weight: Input should be greater than 0" in fail.stderr


# --- YAML's on/off: every setting written with words accepts what YAML makes of them ----

_YAML_BOOL_WORDS = {"on", "off", "yes", "no", "true", "false", "y", "n"}


def _fields(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], Any]]:
    """(path, annotation) of every setting under `model`: lists as item 0, dicts as "m"."""
    for name, info in model.model_fields.items():
        yield from _walk((*path, name), info.annotation)


def _walk(path: tuple[str, ...], ann: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    origin, args = get_origin(ann), [a for a in get_args(ann) if a is not type(None)]
    if origin is Annotated or (origin in (Union, UnionType) and len(args) == 1):
        yield from _walk(path, args[0])
    elif origin is list:
        yield from _walk((*path, "0"), args[0])
    elif origin is dict:
        yield from _walk((*path, "m"), args[1])
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        yield from _fields(ann, path)
    else:
        yield path, ann


def _words(ann: Any) -> set[str]:
    """The values of a Literal setting (through Annotated), else empty."""
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    return {a for a in get_args(ann) if isinstance(a, str)} if get_origin(ann) is Literal else set()


def _base() -> dict[str, Any]:
    return {"nodes": [{"name": "a", "rest": "http://h:1"}], "discovery": {"dns": "tf.example"},
            "models": {"m": {"batching": {}}}}


def _with_edge(tmp_path: Path) -> dict[str, Any]:
    """`_base()` plus the edge's sections whose booleans need other fields to be a config:
    a TLS pair and client CA made here, and one API key."""
    ca = CA(tmp_path / "pki")
    pair = ca.issue("proxy", "proxy")
    return {**_base(),
            "listen": {"tls": {"cert": str(pair.cert), "key": str(pair.key),
                               "client_ca": str(ca.path)}},
            "auth": {"keys": [{"id": "svc", "sha256": "0" * 64,
                               "limits": {"requests_per_s": 5}}]}}


def _set(doc: Any, path: tuple[str, ...], value: Any) -> None:
    """Set `path` (a "0" step: the list's first item, made if missing) to `value`."""
    for key, after in itertools.pairwise(path):
        empty: Any = [None] if after == "0" else {}
        if isinstance(doc, list):
            doc[0] = doc[0] if doc[0] is not None else empty
            doc = doc[0]
        else:
            doc = doc.setdefault(key, empty)
    if isinstance(doc, list):
        doc[0] = value
    else:
        doc[path[-1]] = value


def _yaml_of(doc: dict[str, Any], words: dict[tuple[str, ...], str]) -> str:
    """`doc` as YAML with the settings of `words` written as bare, unquoted words."""
    marks = {}
    for i, (path, word) in enumerate(words.items()):
        marks[f"@@{i}@@"] = word
        _set(doc, path, f"@@{i}@@")
    text = yaml.safe_dump(doc, sort_keys=False)
    for mark, word in marks.items():
        text = text.replace(f"'{mark}'", word).replace(mark, word)
    return text


SETTINGS = list(_fields(Config))
ON_OFF = {p: w for p, ann in SETTINGS if (w := _words(ann)) & _YAML_BOOL_WORDS}
OTHER_WORDS = {p: w for p, ann in SETTINGS if (w := _words(ann)) and p not in ON_OFF}
# The routing sections of lb.rollout (sticky_by: header or api_key, not both nor
# neither) validate across their fields: a bare word in one of them alone is not a
# config; their booleans are plain pydantic ones, tested in tests/lb/rollout.
_ROUTING = {"split", "match", "sticky_by", "shadow", "rollout"}
BOOLS = [p for p, ann in SETTINGS if ann is bool and not _ROUTING & set(p)]


def test_the_walk_finds_the_settings_written_with_words() -> None:
    assert ("models", "m", "cache") in ON_OFF        # auto | on | off
    assert ("log", "format") in OTHER_WORDS and ("hedge", "enabled") in BOOLS
    assert {("reload", "watch"), ("cache", "adaptive", "enabled")} <= set(BOOLS)


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "On", "OFF"])
def test_check_config_takes_yaml_booleans_for_on_off_settings(tmp_path: Path, word: str) -> None:
    """check-config accepts every on/off setting, and every boolean one, written bare."""
    path = tmp_path / "lb.yaml"
    path.write_text(_yaml_of(_with_edge(tmp_path), {p: word for p in [*ON_OFF, *BOOLS]}))
    out = subprocess.run([sys.executable, "-m", "lb", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cfg = load_config(path)
    truth = word.lower() in ("on", "yes")
    for setting in ON_OFF:
        value: Any = cfg
        for key in setting:
            value = value[0] if key == "0" else value.get(key) if isinstance(value, dict) \
                else getattr(value, key)
        assert value == ("on" if truth else "off"), (setting, value)
    assert cfg.hedge.enabled is truth and cfg.log.access is truth


def test_a_yaml_boolean_where_a_word_is_expected_says_so(tmp_path: Path) -> None:
    """Settings whose words are not booleans: the message names YAML and how to quote."""
    path = tmp_path / "lb.yaml"
    path.write_text(_yaml_of(_with_edge(tmp_path), dict.fromkeys(OTHER_WORDS, "on")))
    out = subprocess.run([sys.executable, "-m", "lb", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == len(OTHER_WORDS), lines
    for setting in OTHER_WORDS:
        line = next(ln for ln in lines if f": {'.'.join(setting)}: " in ln)
        assert "YAML read the unquoted word as the boolean true" in line, line
        assert 'quote the word, e.g. "on"' in line, line


def test_ewma_decay_s_is_the_old_name_of_tau_relax_s(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lb.config"):
        cfg = parse_config({"nodes": [{"name": "a", "rest": "http://127.0.0.1:1"}],
                            "policy": {"ewma_decay_s": 3}})
    assert cfg.policy.tau_relax_s == 3
    assert "ewma_decay_s is deprecated" in caplog.text
    with pytest.raises(ConfigError, match="policy"):
        parse_config({"nodes": [{"name": "a", "rest": "http://127.0.0.1:1"}],
                      "policy": {"ewma_decay_s": 3, "tau_relax_s": 4}})
