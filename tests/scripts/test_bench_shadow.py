"""The verdict of scripts/bench_shadow.py: pooled percentiles against the targets, its
exit code, and the config sections it gives each proxy (in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lb.config import parse_config
from scripts import bench_shadow


def outcome(off: list[float], on: list[float], failed: int = 0) -> dict[str, Any]:
    shadow = {"totals": {"pairs": 10, "agreement": 1.0}, "skipped": {}}
    return {"pooled": {"off": off, "on": on}, "phases": [], "failed": failed,
            "shadow": shadow, "config": {}}


@pytest.fixture(autouse=True)
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bench_shadow, "OUT", tmp_path)
    return tmp_path


def test_targets_met_missed_and_failures(out_dir: Path) -> None:
    base = [10.0] * 98 + [20.0, 20.0]
    assert bench_shadow.report(outcome(base, [x + 0.3 for x in base])) == 0
    doc = json.loads((out_dir / "bench_shadow.json").read_text())["summary"]
    assert doc["p50_ms"]["diff"] == pytest.approx(0.3) and doc["p99_ms"]["met"]
    assert bench_shadow.report(outcome(base, [x + 0.8 for x in base])) == 2     # p50
    assert bench_shadow.report(outcome(base, [10.0] * 98 + [22.0, 22.0])) == 2  # p99 +10 %
    assert bench_shadow.report(outcome(base, base, failed=1)) == 1


def test_model_sections_are_valid_config() -> None:
    nodes = [{"name": "s", "rest": "http://h:1", "group": "stable"},
             {"name": "c", "rest": "http://h:2", "group": "candidate"}]
    for share in (None, 10.0):
        cfg = parse_config({"nodes": nodes,
                            "models": {"mnist": bench_shadow.model_section(share)}})
        shadow = cfg.models["mnist"].shadow
        assert (shadow is None) == (share is None)
        assert shadow is None or (shadow.group, shadow.share) == ("candidate", 10.0)
