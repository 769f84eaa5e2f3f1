"""DNS discovery against a real DNS server on loopback (tests/dnsserver.py).

Timing assertions are loose on purpose (a shared 2-core box): they tell a
TTL-driven round (about 1 s) from an interval-driven one (30 s), never
milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from pydantic import ValidationError

from lb.config import DiscoveryConfig, NodeConfig, parse_config
from lb.pool.discovery import TTL_FLOOR_S, DnsDiscovery
from tests.dnsserver import DnsServer, dns_server

NAME = "workers.test"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server() as server:
        yield server


def make_cfg(server: DnsServer, **kw: Any) -> DiscoveryConfig:
    base: dict[str, Any] = {"dns": NAME, "nameserver": server.address, "interval_s": 0.2,
                            "timeout_s": 0.5}
    return DiscoveryConfig(**(base | kw))


class Recorder:
    """The `apply` callback: keeps every node set it was given."""

    def __init__(self) -> None:
        self.calls: list[list[NodeConfig]] = []

    def __call__(self, nodes: list[NodeConfig]) -> None:
        self.calls.append(nodes)

    def names(self, i: int = -1) -> list[str]:
        return [n.name for n in self.calls[i]]


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(disc: DnsDiscovery) -> AsyncIterator[asyncio.Task[None]]:
    """run() as a task for the block; it must still be running at the end and
    end by cancellation, leaving none of its query tasks behind."""
    task = asyncio.create_task(disc.run(), name="test-discovery")
    try:
        yield task
        assert not task.done(), "run() ended by itself"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("discovery-")]
    assert left == []


async def rounds_pass(disc: DnsDiscovery, n: int, within: float = 5.0) -> None:
    """Wait until `n` more rounds have finished."""
    target = disc.status.resolutions + n
    await until(lambda: disc.status.resolutions >= target, within, f"{n} more rounds")


async def test_first_resolution_is_immediate_and_sorted(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.10", "127.0.0.3", "127.0.0.2", "127.0.0.3"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=30, rest_port=9001, grpc_port=9000,
                                 weight=2.5), applied)
    async with running(disc):
        await until(lambda: bool(applied.calls), 2.0, "the first apply")
    assert applied.calls[0] == [
        NodeConfig(name=f"127.0.0.{i}", rest=f"http://127.0.0.{i}:9001",
                   grpc=f"127.0.0.{i}:9000", weight=2.5) for i in (2, 3, 10)]
    st = disc.status.as_dict()
    assert st["name"] == NAME and st["nameserver"] == dns.address
    assert st["addresses"] == ["127.0.0.2", "127.0.0.3", "127.0.0.10"]
    assert st["resolutions"] == 1 and st["changes"] == 1 and st["failures"] == 0
    assert st["consecutive_failures"] == 0 and st["last_error"] is None
    assert st["ttl"] == 60 and abs(st["last_ok"] - time.time()) < 10
    assert disc.nodes == applied.calls[0]


async def test_changes_are_applied_and_logged(dns: DnsServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lb.pool.discovery")
    dns.set_records(NAME, ["127.0.0.2", "127.0.0.3"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns), applied)
    async with running(disc):
        await until(lambda: len(applied.calls) == 1, 2.0, "the first apply")
        dns.set_records(NAME, ["127.0.0.3", "127.0.0.4", "127.0.0.5"])
        await until(lambda: len(applied.calls) == 2, 3.0, "the second apply")
        dns.set_records(NAME, ["127.0.0.5"])
        await until(lambda: len(applied.calls) == 3, 3.0, "the third apply")
    assert applied.names(1) == ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
    assert applied.names(2) == ["127.0.0.5"]
    assert disc.status.changes == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "lb.pool.discovery"]
    assert any("+127.0.0.4 +127.0.0.5 -127.0.0.2 (3 nodes)" in m for m in messages), messages
    assert any("-127.0.0.3 -127.0.0.4 (1 nodes)" in m for m in messages), messages


async def test_no_apply_when_the_set_is_unchanged(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2", "127.0.0.3"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=0.1), applied)
    async with running(disc):
        await rounds_pass(disc, 3)
        dns.set_records(NAME, ["127.0.0.3", "127.0.0.2"], ttl=30)    # same set, new order
        await rounds_pass(disc, 3)
    assert len(applied.calls) == 1
    assert disc.status.changes == 1
    assert dns.queries(NAME, "A") >= 6 and dns.queries(NAME, "AAAA") >= 6


FAULTS = [("servfail", None, "SERVFAIL"), ("refused", None, "REFUSED"),
          ("drop", None, "no answer within"), ("servfail", "AAAA", "AAAA: ")]


@pytest.mark.parametrize(("fault", "qtype", "reason"), FAULTS,
                         ids=["servfail", "refused", "timeout", "aaaa-servfail"])
async def test_failure_keeps_the_last_set_until_recovery(
        dns: DnsServer, caplog: pytest.LogCaptureFixture, fault: Any, qtype: str | None,
        reason: str) -> None:
    caplog.set_level(logging.DEBUG, logger="lb.pool.discovery")
    dns.set_records(NAME, ["127.0.0.2", "127.0.0.3"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=0.1, timeout_s=0.3), applied)
    async with running(disc):
        await until(lambda: len(applied.calls) == 1, 2.0, "the first apply")
        dns.fail(NAME, fault, qtype)
        dns.set_records(NAME, ["127.0.0.9"])          # must not be seen while failing
        await until(lambda: disc.status.consecutive_failures >= 3, 5.0, "3 failures")
        st = disc.status.as_dict()
        assert reason in st["last_error"], st["last_error"]
        assert st["addresses"] == ["127.0.0.2", "127.0.0.3"]
        assert st["failures"] >= 3
        assert len(applied.calls) == 1
        dns.fail(NAME, None, qtype)
        await until(lambda: len(applied.calls) == 2, 3.0, "the apply after recovery")
        assert disc.status.consecutive_failures == 0
    assert applied.names() == ["127.0.0.9"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per streak of failures"
    assert "keeping the last good set (2 nodes)" in warnings[0].getMessage()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("recovered after" in m for m in infos), infos


@pytest.mark.parametrize("how", ["no-records", "nxdomain"])
async def test_an_empty_answer_keeps_the_last_set(dns: DnsServer, how: str) -> None:
    dns.set_records(NAME, ["127.0.0.2"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=0.1), applied)
    async with running(disc):
        await until(lambda: len(applied.calls) == 1, 2.0, "the first apply")
        if how == "nxdomain":
            dns.remove(NAME)
        else:
            dns.set_records(NAME, [])
        await until(lambda: disc.status.consecutive_failures >= 2, 3.0, "2 failures")
        assert disc.status.last_error == "no A or AAAA records"
        assert disc.status.addresses == ["127.0.0.2"]
        dns.set_records(NAME, ["127.0.0.2"])
        await until(lambda: disc.status.consecutive_failures == 0, 3.0, "recovery")
    assert len(applied.calls) == 1          # the same set came back: nothing to apply


async def test_nothing_is_applied_before_a_good_answer(dns: DnsServer) -> None:
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=0.1), applied)
    async with running(disc):
        await rounds_pass(disc, 2)
        assert applied.calls == [] and disc.nodes is None
        assert disc.status.last_ok is None and disc.status.failures >= 2
        dns.set_records(NAME, ["127.0.0.2"])
        await until(lambda: len(applied.calls) == 1, 3.0, "the first apply")


async def test_a_ttl_shorter_than_the_interval_is_honoured(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"], ttl=1)
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=30), applied)
    async with running(disc):
        await until(lambda: len(applied.calls) == 1, 2.0, "the first apply")
        start = time.monotonic()
        dns.set_records(NAME, ["127.0.0.3"], ttl=1)
        # The TTL (1 s) asks again in about a second; the interval would take 30.
        await until(lambda: len(applied.calls) == 2, 8.0, "the change after the TTL")
        assert time.monotonic() - start > 0.5
    assert disc.status.ttl == 1


async def test_a_zero_ttl_does_not_spin(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"], ttl=0)
    disc = DnsDiscovery(make_cfg(dns, interval_s=30), Recorder())
    async with running(disc):
        await asyncio.sleep(2.5 * TTL_FLOOR_S)
    # About 3 rounds at the floor (the first at once); a spinning loop makes thousands.
    assert 2 <= disc.status.resolutions <= 5, disc.status.resolutions
    assert disc.status.ttl == 0


async def test_ipv6_and_mixed_records(dns: DnsServer) -> None:
    dns.set_records(NAME, ["fd00::10", "127.0.0.2", "::1", "fd00:0:0::2"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns), applied)
    assert await disc.resolve_once() == [
        NodeConfig(name="127.0.0.2", rest="http://127.0.0.2:8501", grpc="127.0.0.2:8500"),
        NodeConfig(name="--1", rest="http://[::1]:8501", grpc="[::1]:8500"),
        NodeConfig(name="fd00--2", rest="http://[fd00::2]:8501", grpc="[fd00::2]:8500"),
        NodeConfig(name="fd00--10", rest="http://[fd00::10]:8501", grpc="[fd00::10]:8500"),
    ]
    async with running(disc):
        await until(lambda: bool(applied.calls), 2.0, "the first apply")
    assert disc.status.addresses == ["127.0.0.2", "::1", "fd00::2", "fd00::10"]


async def test_grpc_port_null_gives_rest_only_nodes(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2", "::1"])
    disc = DnsDiscovery(make_cfg(dns, grpc_port=None), Recorder())
    nodes = await disc.resolve_once()
    assert nodes is not None and [n.grpc for n in nodes] == [None, None]


async def test_an_ipv6_nameserver_with_a_port() -> None:
    with dns_server("::1") as server:
        assert server.address.startswith("[::1]:")
        server.set_records(NAME, ["127.0.0.2"])
        disc = DnsDiscovery(make_cfg(server), Recorder())
        nodes = await disc.resolve_once()
    assert nodes is not None and [n.name for n in nodes] == ["127.0.0.2"]


async def test_many_records_arrive_over_tcp(dns: DnsServer) -> None:
    # 60 A records do not fit a 512-byte UDP answer: the resolver must retry over TCP.
    addresses = [f"127.0.1.{i}" for i in range(1, 61)]
    dns.set_records(NAME, addresses)
    nodes = await DnsDiscovery(make_cfg(dns), Recorder()).resolve_once()
    assert nodes is not None and [n.name for n in nodes] == addresses


async def test_a_round_ends_within_its_deadline(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"])
    dns.fail(NAME, "drop")
    disc = DnsDiscovery(make_cfg(dns, timeout_s=0.3), Recorder())
    start = time.monotonic()
    assert await disc.resolve_once() is None
    assert time.monotonic() - start < 3.0       # 0.3 s, with room for a busy box
    assert disc.status.last_error is not None and "0.3s" in disc.status.last_error


async def test_cancel_during_a_query_ends_promptly(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"])
    dns.fail(NAME, "drop")
    disc = DnsDiscovery(make_cfg(dns, timeout_s=30), Recorder())
    task = asyncio.create_task(disc.run(), name="test-discovery")
    await until(lambda: dns.queries(NAME) >= 2, 2.0, "both queries sent")
    task.cancel()
    start = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 1.0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("discovery-")]


async def test_reconfigure_takes_effect_at_once(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"])
    dns.set_records("other.test", ["127.0.0.7", "127.0.0.8"])
    applied = Recorder()
    first = make_cfg(dns, interval_s=30)
    disc = DnsDiscovery(first, applied)
    async with running(disc):
        await until(lambda: len(applied.calls) == 1, 2.0, "the first apply")
        disc.reconfigure(first)                      # unchanged: no extra round
        await asyncio.sleep(0.3)
        assert disc.status.resolutions == 1
        disc.reconfigure(make_cfg(dns, dns="other.test", interval_s=30, rest_port=7001,
                                  grpc_port=None, weight=3))
        await until(lambda: len(applied.calls) == 2, 2.0, "the apply after reconfigure")
        assert applied.calls[1] == [
            NodeConfig(name=f"127.0.0.{i}", rest=f"http://127.0.0.{i}:7001", weight=3)
            for i in (7, 8)]
        assert disc.status.name == "other.test"
        # Same addresses, another port: the nodes changed, so they are applied.
        disc.reconfigure(make_cfg(dns, dns="other.test", interval_s=0.1, rest_port=7002))
        await until(lambda: len(applied.calls) == 3, 2.0, "the apply after a port change")
        assert applied.calls[2][0].rest == "http://127.0.0.7:7002"
        await rounds_pass(disc, 3, within=3.0)       # the new, short interval is in force


async def test_reconfigure_to_another_nameserver(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"])
    applied = Recorder()
    disc = DnsDiscovery(make_cfg(dns, interval_s=30), applied)
    with dns_server("::1") as other:
        other.set_records(NAME, ["127.0.0.5"])
        async with running(disc):
            await until(lambda: len(applied.calls) == 1, 2.0, "the first apply")
            disc.reconfigure(make_cfg(other, interval_s=30))
            await until(lambda: len(applied.calls) == 2, 2.0, "the apply after reconfigure")
    assert applied.names() == ["127.0.0.5"]
    assert disc.status.nameserver == other.address
    assert other.queries(NAME, "A") == 1


async def test_a_failing_apply_is_offered_again(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2"])
    calls: list[list[NodeConfig]] = []

    def apply(nodes: list[NodeConfig]) -> None:
        calls.append(nodes)
        if len(calls) == 1:
            raise RuntimeError("not now")

    disc = DnsDiscovery(make_cfg(dns, interval_s=0.1), apply)
    async with running(disc):
        await until(lambda: len(calls) == 2, 3.0, "the second offer")
        await rounds_pass(disc, 2)
    assert calls[0] == calls[1] and len(calls) == 2
    assert disc.status.changes == 1 and disc.nodes == calls[1]
    assert disc.status.last_error == "apply failed: RuntimeError: not now"


async def test_metrics_accessor(dns: DnsServer) -> None:
    dns.set_records(NAME, ["127.0.0.2", "127.0.0.3"])
    disc = DnsDiscovery(make_cfg(dns), Recorder())
    await disc.refresh()
    dns.fail(NAME, "servfail")
    await disc.refresh()

    class Collector:
        def collect(self) -> Iterator[Metric]:
            yield from disc.status.metrics("tfslb_")

    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    for line in ("tfslb_discovery_resolutions_total 2.0", "tfslb_discovery_failures_total 1.0",
                 "tfslb_discovery_changes_total 1.0", "tfslb_discovery_consecutive_failures 1.0",
                 "tfslb_discovery_nodes 2.0"):
        assert line in text.splitlines(), text
    assert "tfslb_discovery_last_success_timestamp_seconds 1." in text


def test_runs_on_uvloop(dns: DnsServer) -> None:
    """The proxy runs on uvloop: the resolver's sockets must work there too."""
    dns.set_records(NAME, ["127.0.0.2", "::1"])

    async def once() -> list[NodeConfig] | None:
        return await DnsDiscovery(make_cfg(dns), Recorder()).resolve_once()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        nodes = runner.run(once())
    assert nodes is not None and [n.name for n in nodes] == ["127.0.0.2", "--1"]


@pytest.mark.parametrize(("value", "addr"), [
    ("10.0.0.10", ("10.0.0.10", 53)), ("10.0.0.10:5353", ("10.0.0.10", 5353)),
    ("fd00::10", ("fd00::10", 53)), ("[fd00::10]:5353", ("fd00::10", 5353)),
    ("[fd00::10]", ("fd00::10", 53))])
def test_nameserver_forms(value: str, addr: tuple[str, int]) -> None:
    assert DiscoveryConfig(dns=NAME, nameserver=value).nameserver_addr() == addr


@pytest.mark.parametrize("value", ["dns.example", "dns.example:53", "10.0.0.10:0",
                                   "10.0.0.10:x", "[fd00::10]:99999", ""])
def test_bad_nameservers_are_config_errors(value: str) -> None:
    with pytest.raises(ValidationError, match="nameserver"):
        DiscoveryConfig(dns=NAME, nameserver=value)


def test_discovery_alone_is_a_valid_config() -> None:
    cfg = parse_config({"discovery": {"dns": NAME, "nameserver": "127.0.0.1:5353"}})
    assert cfg.nodes == [] and cfg.discovery is not None
    assert cfg.discovery.nameserver_addr() == ("127.0.0.1", 5353)
