"""PNG charts of the benchmarks: grouped bars, latency CDFs, latency against throughput.

Called by scripts/bench_*.py (`bar_chart` by bench_raw, `cdf_chart` by
bench_policy, `latency_chart` by bench_batching; `_pyplot` and `NOISE_NOTE` by
bench_cache_traces for its own figure). Guarantees: matplotlib is imported only
when a chart is drawn, with the Agg backend (no display needed); every chart
carries `NOISE_NOTE` as a footnote, creates its directory, is written at 120 dpi
and closed, and its path is returned. `NOISE_NOTE` is also the caveat the
benchmarks print with their figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NOISE_NOTE = ("shared, noisy 2-core box: the load generator, the proxy and the backends "
              "compete for the same cores; compare ratios from one run, not absolute figures")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """What every chart ends with: the noise footnote, the layout, the PNG at 120 dpi
    (its directory made), the figure closed; returns `path`."""
    fig.text(0.01, 0.01, NOISE_NOTE, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_chart(path: Path, title: str, labels: list[str], series: dict[str, list[float]],
              ylabel: str) -> Path:
    """Grouped bars: one group per label, one bar per series (NaN: no bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=12, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    return _save(plt, fig, path)


def cdf_chart(path: Path, title: str, curves: dict[str, list[float]]) -> Path:
    """Latency CDFs on a log-x axis, tail emphasised by a logit-like y (1 - q)."""
    import numpy as np

    plt = _pyplot()
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 5))
    for name, lat in curves.items():
        if not lat:
            continue
        xs = np.sort(np.asarray(lat))
        qs = np.arange(1, len(xs) + 1) / len(xs)
        ax.plot(xs, qs, label=name, lw=1.2)
        tail.plot(xs[:-1], 1.0 - qs[:-1], label=name, lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("latency ms (from scheduled start)")
    ax.set_ylabel("fraction of requests")
    tail.set_xscale("log")
    tail.set_yscale("log")
    tail.set_xlabel("latency ms")
    tail.set_ylabel("fraction slower (1 - CDF)")
    ax.set_title(title, fontsize=10)
    tail.set_title("tail", fontsize=10)
    ax.legend(fontsize=7)
    for a in (ax, tail):
        a.grid(True, which="both", alpha=0.3)
    return _save(plt, fig, path)


def latency_chart(path: Path, title: str, curves: dict[str, list[tuple[float, float, float]]],
                  p99_limit_ms: float | None = None,
                  xlabel: str = "requests/s achieved (open loop)") -> Path:
    """p99 and p50 against throughput, one line per contender: `curves` maps a name
    to (achieved rate, p50 ms, p99 ms) points; a dashed line marks `p99_limit_ms`."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    for name, points in curves.items():
        pts = sorted(points)
        for ax, k in zip(axes, (2, 1), strict=True):
            ax.plot([p[0] for p in pts], [p[k] for p in pts], marker="o", ms=4, lw=1.2,
                    label=name)
    if p99_limit_ms is not None:
        axes[0].axhline(p99_limit_ms, ls="--", color="grey", lw=0.8,
                        label=f"p99 limit {p99_limit_ms:g} ms")
    for ax, what in zip(axes, ("p99", "p50"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{what} latency ms (from scheduled start)")
        ax.set_title(f"{what}: {title}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
