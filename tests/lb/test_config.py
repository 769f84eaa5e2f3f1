"""Config validation: every problem is reported with file and field; CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lb.config import load_config, parse_config
from lb.errors import ConfigError

GOOD = """
listen: {rest: "127.0.0.1:8501", grpc: "127.0.0.1:8500", admin: "127.0.0.1:9901"}
nodes:
  - {name: tf-a, rest: "http://10.0.0.5:8501", grpc: "10.0.0.5:8500", weight: 3}
  - {name: tf-b, rest: "http://10.0.0.6:8501", grpc: "10.0.0.6:8500", weight: 1}
models:
  mnist: {cost: 1.0, row_cache: true}
policy: {name: least_load, ewma_decay_s: 10, window_s: 10}
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
