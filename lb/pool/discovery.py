"""Nodes from DNS: every A/AAAA record of one name (a headless Service) is a node.

Called by the server when the config has a `discovery:` section: it builds
`DnsDiscovery(cfg.discovery, apply)`, runs `run()` as a task (cancelled at
shutdown), calls `reconfigure()` on a config reload, and shows `status`
(`as_dict()` in /stats, `metrics()` in /metrics). `apply(nodes)` is the
caller's: it gets the discovered nodes only (static `nodes:` are its business).

Guarantees:
* a node is named by its address: IPv4 as is ("10.1.2.3"), IPv6 in its
  compressed form with ':' written '-' ("fd00--1" for fd00::1), as Kubernetes
  writes IPv6 pod names, because a node name admits no ':';
  `rest` is http(s)://ADDR:rest_port (`rest_scheme`; IPv6 bracketed), `grpc`
  ADDR:grpc_port or None, every node has the configured weight and group;
* `apply` gets a non-empty list sorted by address (IPv4 first), and only when
  it differs from the last list it accepted; an exception from it is logged
  and the same list is offered again next round;
* a failed resolution (timeout, SERVFAIL, network error, either family) or an
  answer without any address keeps the last good set: it shows in `status`,
  the metrics and a warning on the first failure of a streak (info on recovery);
* every round ends within `timeout_s` (A and AAAA are asked concurrently);
  NXDOMAIN or no records for one family is normal;
* rounds repeat every `interval_s`, sooner when the records' TTL is shorter,
  but never sooner than `TTL_FLOOR_S` on account of a TTL;
* `run()` ends only by cancellation; a reconfigured name, port, weight or
  interval is used from the next round, which starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lb.config import DiscoveryConfig, NodeConfig
from lb.errors import ConfigError

log = logging.getLogger("lb.pool.discovery")

TTL_FLOOR_S = 1.0        # a TTL of 0 must not make the loop spin
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Apply = Callable[[list[NodeConfig]], None]


def node_name(addr: IPAddress) -> str:
    """The node name of an address (see the module docstring)."""
    return str(addr) if addr.version == 4 else addr.compressed.replace(":", "-")


def nodes_for(cfg: DiscoveryConfig, addresses: Iterable[IPAddress]) -> list[NodeConfig]:
    """One node per distinct address, sorted (IPv4 first, then numerically)."""
    out = []
    for addr in sorted(set(addresses), key=lambda a: (a.version, int(a))):
        host = str(addr) if addr.version == 4 else f"[{addr.compressed}]"
        grpc = None if cfg.grpc_port is None else f"{host}:{cfg.grpc_port}"
        out.append(NodeConfig(name=node_name(addr),
                              rest=f"{cfg.rest_scheme}://{host}:{cfg.rest_port}",
                              grpc=grpc, weight=cfg.weight, group=cfg.group))
    return out


def make_resolver(cfg: DiscoveryConfig) -> dns.asyncresolver.Resolver:
    """A resolver asking only `cfg.nameserver`, or the servers of /etc/resolv.conf
    (with its search list, as getaddrinfo would); raises ConfigError if neither works."""
    addr = cfg.nameserver_addr()
    if addr is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except (OSError, dns.exception.DNSException) as exc:
            raise ConfigError(f"discovery: no system resolver: {exc}") from None
        return resolver
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(addr[0], addr[1])]
    resolver.domain = dns.name.root     # no search list: the name is asked as written
    resolver.timeout = cfg.timeout_s
    return resolver


@dataclass(slots=True)
class DiscoveryStatus:
    """What /stats ("discovery") and /metrics show; written by `DnsDiscovery` only."""

    name: str
    nameserver: str | None
    last_ok: float | None = None            # wall time of the latest good resolution
    last_error: str | None = None           # the latest failure's reason (kept after recovery)
    consecutive_failures: int = 0
    resolutions: int = 0                    # rounds finished, good or not
    failures: int = 0
    changes: int = 0                        # node sets handed to `apply`
    addresses: list[str] = field(default_factory=list)   # the set in use, sorted
    ttl: int | None = None                  # lowest TTL of the latest good answer

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "nameserver": self.nameserver, "last_ok": self.last_ok,
                "last_error": self.last_error,
                "consecutive_failures": self.consecutive_failures,
                "resolutions": self.resolutions, "failures": self.failures,
                "changes": self.changes, "addresses": list(self.addresses), "ttl": self.ttl}

    def metrics(self, prefix: str = "tfslb_") -> Iterator[Metric]:
        """Families for a prometheus_client collector (read at scrape time)."""
        counters: list[tuple[str, str, float]] = [
            ("discovery_resolutions", "DNS discovery rounds", self.resolutions),
            ("discovery_failures", "DNS discovery rounds that failed or found no address "
             "(the last good set was kept)", self.failures),
            ("discovery_changes", "Changed node sets from DNS discovery", self.changes)]
        gauges: list[tuple[str, str, float]] = [
            ("discovery_consecutive_failures", "DNS discovery failures in a row",
             self.consecutive_failures),
            ("discovery_nodes", "Nodes in the set found by DNS discovery", len(self.addresses)),
            ("discovery_last_success_timestamp_seconds",
             "Unix time of the latest good DNS discovery round", self.last_ok or 0.0)]
        for name, doc, value in counters:
            counter = CounterMetricFamily(prefix + name, doc)
            counter.add_metric([], value)
            yield counter
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(prefix + name, doc)
            gauge.add_metric([], value)
            yield gauge


@dataclass(frozen=True, slots=True)
class _Family:
    """One record type's result: addresses and TTL, or the reason it failed."""

    addresses: tuple[IPAddress, ...] = ()
    ttl: int | None = None
    error: str | None = None


class DnsDiscovery:
    """Resolves one name in a loop and hands changed node sets to `apply`."""

    def __init__(self, cfg: DiscoveryConfig, apply: Apply) -> None:
        self._cfg = cfg
        self._resolver = make_resolver(cfg)
        self._apply = apply
        self._accepted: list[NodeConfig] | None = None
        self._wake = asyncio.Event()
        self.status = DiscoveryStatus(cfg.dns, cfg.nameserver)

    @property
    def config(self) -> DiscoveryConfig:
        return self._cfg

    @property
    def nodes(self) -> list[NodeConfig] | None:
        """The set `apply` last accepted; None before the first one."""
        return None if self._accepted is None else list(self._accepted)

    def reconfigure(self, cfg: DiscoveryConfig) -> None:
        """Use `cfg` from the next round, which starts at once; raises ConfigError
        (and changes nothing) when its resolver cannot be made."""
        if cfg == self._cfg:
            return
        if (cfg.nameserver, cfg.timeout_s) != (self._cfg.nameserver, self._cfg.timeout_s):
            self._resolver = make_resolver(cfg)
        self._cfg = cfg
        self.status.name, self.status.nameserver = cfg.dns, cfg.nameserver
        self._wake.set()

    async def run(self) -> None:
        """Resolve now, then again after each round's delay, until cancelled."""
        while True:
            self._wake.clear()
            try:
                delay = await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("discovery %s: round failed", self._cfg.dns)
                delay = self._cfg.interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def refresh(self) -> float:
        """One round: resolve, hand a changed set to `apply`; returns the delay
        until the next round."""
        cfg = self._cfg
        nodes = await self.resolve_once()
        if nodes is not None and nodes != self._accepted:
            self._offer(nodes)
        if nodes is None or self.status.ttl is None:
            return cfg.interval_s
        return min(cfg.interval_s, max(float(self.status.ttl), TTL_FLOOR_S))

    def _offer(self, nodes: list[NodeConfig]) -> None:
        before = {n.name for n in self._accepted or []}
        after = {n.name for n in nodes}
        try:
            self._apply(nodes)
        except Exception as exc:
            log.exception("discovery %s: apply failed; will offer the set again",
                          self._cfg.dns)
            self.status.last_error = f"apply failed: {type(exc).__name__}: {exc}"
            return
        self._accepted = nodes
        self.status.changes += 1
        self.status.addresses = [urlsplit(n.rest).hostname or n.name for n in nodes]
        diff = [f"+{n}" for n in sorted(after - before)] + [f"-{n}" for n in sorted(before - after)]
        log.info("discovery %s: %s (%d nodes)", self._cfg.dns,
                 " ".join(diff) or "node settings changed", len(nodes))

    async def resolve_once(self) -> list[NodeConfig] | None:
        """Ask A and AAAA once; the node set, or None when the round failed or found
        no address (then `status` says why). Never raises but CancelledError."""
        cfg, resolver = self._cfg, self._resolver
        try:
            async with asyncio.timeout(cfg.timeout_s), asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._query(resolver, cfg, rdtype),
                                        name=f"discovery-{rdtype.name}-{cfg.dns}")
                         for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]
        except TimeoutError:
            self._failed(cfg, f"no answer within {cfg.timeout_s:g}s")
            return None
        results = [t.result() for t in tasks]
        errors = [r.error for r in results if r.error is not None]
        if errors:
            self._failed(cfg, "; ".join(errors))
            return None
        addresses = [a for r in results for a in r.addresses]
        if not addresses:
            self._failed(cfg, "no A or AAAA records")
            return None
        ttls = [r.ttl for r in results if r.ttl is not None]
        return self._succeeded(cfg, nodes_for(cfg, addresses), min(ttls) if ttls else None)

    @staticmethod
    async def _query(resolver: dns.asyncresolver.Resolver, cfg: DiscoveryConfig,
                     rdtype: dns.rdatatype.RdataType) -> _Family:
        kind = rdtype.name
        try:
            answer = await resolver.resolve(cfg.dns, rdtype, lifetime=cfg.timeout_s,
                                            search=cfg.nameserver is None)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return _Family()
        except dns.resolver.LifetimeTimeout:
            return _Family(error=f"{kind}: no answer within {cfg.timeout_s:g}s")
        except (dns.exception.DNSException, OSError) as exc:
            return _Family(error=f"{kind}: {type(exc).__name__}: {exc}")
        addrs = tuple(ipaddress.ip_address(rd.address) for rd in answer)
        return _Family(addrs, answer.chaining_result.minimum_ttl)

    def _failed(self, cfg: DiscoveryConfig, reason: str) -> None:
        st = self.status
        st.resolutions += 1
        st.failures += 1
        st.consecutive_failures += 1
        st.last_error = reason
        if st.consecutive_failures == 1:
            log.warning("discovery %s: resolution failed (%s); keeping the last good set "
                        "(%d nodes)", cfg.dns, reason, len(st.addresses))
        else:
            log.debug("discovery %s: still failing (%d in a row): %s", cfg.dns,
                      st.consecutive_failures, reason)

    def _succeeded(self, cfg: DiscoveryConfig, nodes: list[NodeConfig],
                   ttl: int | None) -> list[NodeConfig]:
        st = self.status
        if st.consecutive_failures:
            log.info("discovery %s: resolution recovered after %d failures", cfg.dns,
                     st.consecutive_failures)
        st.resolutions += 1
        st.consecutive_failures = 0
        st.last_ok = time.time()
        st.ttl = ttl
        return nodes
