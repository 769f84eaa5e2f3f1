"""lb.rollout.settings through lb.config: routing sections validated at the boundary,
every error naming its field; groups of static and discovered nodes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from lb.config import DiscoveryConfig, parse_config
from lb.errors import ConfigError
from lb.pool.discovery import nodes_for
from lb.rollout.settings import key_version, routed

NODES = [{"name": "a", "rest": "http://h:1", "group": "stable"},
         {"name": "b", "rest": "http://h:2", "group": "canary"}]


def doc(model: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"nodes": NODES, "models": {"mnist": model}, **extra}


def test_a_full_model_section_is_valid() -> None:
    cfg = parse_config(doc({
        "split": [{"group": "stable", "share": 95}, {"group": "canary", "share": 5}],
        "match": [{"header": "X-Model-Group", "value": "canary", "group": "canary"}],
        "sticky_by": {"api_key": True},
        "shadow": {"group": "canary", "share": 10}}))
    m = cfg.model("mnist")
    assert routed(m) and not routed(cfg.model("other"))
    assert m.match[0].header == "x-model-group"          # headers have no case
    assert m.sticky_by is not None and m.sticky_by.api_key
    assert [n.group for n in cfg.nodes] == ["stable", "canary"]
    assert parse_config({"nodes": [{"name": "x", "rest": "http://h:1"}]}).nodes[0].group == \
        "default"
    rollout = parse_config(doc({"rollout": {"from": "stable", "to": "canary",
                                            "steps": [1, 50, 100]}})).model("mnist").rollout
    assert rollout is not None and rollout.from_ == "stable" and rollout.every_s == 60.0
    assert rollout.abort_if.error_rate_over_stable == 0.01


@pytest.mark.parametrize(("model", "field", "words"), [
    ({"split": [{"group": "stable", "share": 90}]}, "models.mnist.split", "add up to 90"),
    ({"split": [{"group": "stable", "share": 50}, {"group": "stable", "share": 50}]},
     "models.mnist.split", "listed twice"),
    ({"split": [{"group": "stable", "share": 95}, {"group": "blue", "share": 5}]},
     "models.mnist.split.1.group", "no node is in group 'blue'"),
    ({"split": [{"group": "stable", "share": 101}]}, "models.mnist.split.0.share",
     "less than or equal to 100"),
    ({"match": [{"header": "x-g", "value": "v", "group": "canary"}]},
     "models.mnist.split", "group 'default'"),
    ({"split": [{"group": "stable", "share": 100}],
      "match": [{"header": "bad header", "value": "v", "group": "canary"}]},
     "models.mnist.match.0.header", "pattern"),
    ({"split": [{"group": "stable", "share": 100}], "sticky_by": {}},
     "models.mnist.sticky_by", "either header"),
    ({"split": [{"group": "stable", "share": 100}], "shadow": {"group": "canary", "share": 0}},
     "models.mnist.shadow.share", "greater than 0"),
    ({"rollout": {"from": "stable", "to": "stable", "steps": [5]}}, "models.mnist.rollout",
     "same group"),
    ({"rollout": {"from": "stable", "to": "canary", "steps": [50, 5]}},
     "models.mnist.rollout", "larger than the one before"),
    ({"rollout": {"from": "stable", "to": "canary", "steps": [5, 100],
                  "abort_if": {"agreement_below": 0.9}}},
     "models.mnist.rollout.abort_if.agreement_below", "needs a shadow"),
    ({"split": [{"group": "stable", "share": 100}],
      "rollout": {"from": "stable", "to": "canary", "steps": [5]}},
     "models.mnist.rollout", "not both"),
    ({"rollout": {"from": "stable", "to": "canary", "steps": [5], "wait_s": 3}},
     "models.mnist.rollout.wait_s", "Extra inputs"),
])
def test_errors_name_the_field(model: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc(model), "lb.yaml")
    msg = str(info.value)
    assert f"lb.yaml: {field}" in msg and words in msg, msg


def test_discovered_nodes_carry_the_discovery_group() -> None:
    d = DiscoveryConfig(dns="tf.svc", group="canary")
    [node] = nodes_for(d, [ipaddress.ip_address("10.0.0.9")])
    assert node.group == "canary"
    cfg = parse_config({"discovery": {"dns": "tf.svc", "group": "canary"},
                        "nodes": [NODES[0]],
                        "models": {"m": {"split": [{"group": "stable", "share": 50},
                                                   {"group": "canary", "share": 50}]}}})
    assert cfg.discovery is not None and cfg.discovery.group == "canary"


def test_key_version() -> None:
    assert key_version(3, None) == "3" and key_version(3, "canary") == "3@canary"
