"""A real DNS server on loopback whose answers a test changes while it runs.

Used by tests/lb/test_discovery.py and by end-to-end tests that add and remove
workers through DNS. dnslib's `DNSServer` answers on one free port over UDP
and TCP (UDP answers over 512 bytes are truncated, so a client retries over
TCP as it would against a real server). Only the names the test set exist;
every other name is NXDOMAIN.

    with dns_server() as dns:                     # 127.0.0.1; dns_server("::1") for IPv6
        dns.set_records("workers.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
        cfg = DiscoveryConfig(dns="workers.test", nameserver=dns.address, ...)
        dns.fail("workers.test", "servfail")      # or "nxdomain", "refused", "drop"
        dns.fail("workers.test", None)            # answer normally again
        dns.set_records("workers.test", [])       # NOERROR with no records
        dns.remove("workers.test")                # NXDOMAIN

"drop" reads a query and never answers it: the client's deadline is what ends
the wait. A fault can be limited to one record type (`qtype="AAAA"`).
`queries(name, qtype)` counts the queries received, which tells how often a
client asked. Everything here is thread-safe (the server answers on threads).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

from tests.procs import free_port

log = logging.getLogger("tests.dnsserver")

Fault = Literal["servfail", "nxdomain", "refused", "drop"]
UDP_MAX = 512     # a classic server truncates larger UDP answers (TC bit): TCP follows
_RCODES = {"servfail": RCODE.SERVFAIL, "nxdomain": RCODE.NXDOMAIN, "refused": RCODE.REFUSED}


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


@dataclass(frozen=True)
class _Entry:
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    ttl: int


class _Zone:
    """What the server answers; `resolve` is dnslib's resolver interface."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._faults: dict[tuple[str, str | None], Fault] = {}
        self._queries: Counter[tuple[str, str]] = Counter()

    def set(self, name: str, entry: _Entry | None) -> None:
        with self._lock:
            if entry is None:
                self._entries.pop(_key(name), None)
            else:
                self._entries[_key(name)] = entry

    def fail(self, name: str, fault: Fault | None, qtype: str | None) -> None:
        with self._lock:
            if fault is None:
                self._faults.pop((_key(name), qtype), None)
            else:
                self._faults[(_key(name), qtype)] = fault

    def queries(self, name: str, qtype: str | None) -> int:
        with self._lock:
            return sum(n for (k, t), n in self._queries.items()
                       if k == _key(name) and qtype in (None, t))

    def fault_for(self, request: DNSRecord) -> Fault | None:
        """Count the query and say which fault, if any, it meets."""
        name, qtype = _key(str(request.q.qname)), QTYPE[request.q.qtype]
        with self._lock:
            self._queries[(name, qtype)] += 1
            return self._faults.get((name, qtype)) or self._faults.get((name, None))

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name, qtype = _key(str(request.q.qname)), QTYPE[request.q.qtype]
        with self._lock:
            fault = self._faults.get((name, qtype)) or self._faults.get((name, None))
            entry = self._entries.get(name)
        if fault is not None and fault != "drop":
            reply.header.rcode = _RCODES[fault]
            return reply
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for addr in entry.addresses:
            if addr.version == 4 and qtype in ("A", "ANY"):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(str(addr)), ttl=entry.ttl))
            elif addr.version == 6 and qtype in ("AAAA", "ANY"):
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(str(addr)),
                                    ttl=entry.ttl))
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]  # dnslib is untyped: DNSHandler is Any
    """dnslib's handler, plus "drop", and a truncation that keeps the question
    (dnslib's own drops it, and a client rightly ignores such a reply)."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        zone = self.server.resolver
        if zone.fault_for(request) == "drop":
            raise _Dropped
        reply = zone.resolve(request, self)
        self.server.logger.log_reply(self, reply)
        packed = bytes(reply.pack())
        if self.protocol == "udp" and len(packed) > UDP_MAX:
            reply = request.reply()
            reply.header.tc = 1
            packed = bytes(reply.pack())
        return packed

    def handle(self) -> None:
        with contextlib.suppress(_Dropped):
            super().handle()


class _Dropped(Exception):
    """Raised inside the handler to send no answer at all."""


class DnsServer:
    """A DNS server on `host` (127.0.0.1 or ::1), one free port for UDP and TCP."""

    SLOW_BECAUSE = "starts a DNS server (tests/slowness.py)"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._zone = _Zone()
        self._servers = self._bind(DNSLogger(logf=lambda line: log.debug("%s", line)))
        self.port = int(self._servers[0].server.server_address[1])

    def _bind(self, logger: DNSLogger) -> list[DNSServer]:
        # free_port() checks TCP on 127.0.0.1 only: UDP (or ::1) may still be taken.
        for _ in range(20):
            port = free_port()
            started: list[DNSServer] = []
            try:
                for tcp in (False, True):
                    started.append(DNSServer(self._zone, address=self.host, port=port, tcp=tcp,
                                             logger=logger, handler=_Handler))
            except OSError:
                for s in started:
                    s.server.server_close()
                continue
            for s, proto in zip(started, ("udp", "tcp"), strict=True):
                # A short poll interval: shutdown() waits for it, twice per test.
                threading.Thread(target=s.server.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"dns-{proto}-{port}", daemon=True).start()
            return started
        raise RuntimeError(f"no port free for both UDP and TCP on {self.host}")

    @property
    def address(self) -> str:
        """The value for `discovery.nameserver`: "127.0.0.1:PORT" or "[::1]:PORT"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def set_records(self, name: str, addresses: Iterable[str], ttl: int = 60) -> None:
        """Answer A and AAAA queries for `name` with these addresses (v4 and v6 mixed);
        an empty list gives NOERROR with no records."""
        addrs = tuple(ipaddress.ip_address(a) for a in addresses)
        self._zone.set(name, _Entry(addrs, ttl))

    def remove(self, name: str) -> None:
        """Forget `name`: it is NXDOMAIN from now on."""
        self._zone.set(name, None)

    def fail(self, name: str, fault: Fault | None, qtype: str | None = None) -> None:
        """Answer `name` (only its `qtype` queries, if given) with a fault; None clears it."""
        self._zone.fail(name, fault, qtype)

    def queries(self, name: str, qtype: str | None = None) -> int:
        """Queries received for `name` (of `qtype`, if given), over UDP and TCP."""
        return self._zone.queries(name, qtype)

    def close(self) -> None:
        for s in self._servers:
            s.stop()
            s.server.server_close()


@contextlib.contextmanager
def dns_server(host: str = "127.0.0.1") -> Iterator[DnsServer]:
    """A started `DnsServer`, stopped when the block ends whatever happens."""
    server = DnsServer(host)
    try:
        yield server
    finally:
        server.close()
