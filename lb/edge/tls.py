"""TLS on the fronts: one certificate pair for REST and gRPC, rotated without a restart.

Built by `lb.server.Proxy` from `listen.tls` (`ServerTls(cfg)`, which raises
`ConfigError` naming the file when the pair cannot be used). The REST front's
`HttpServer` listens with `context` (uvloop's TLS transport under httptools: ALPN
http/1.1, TLS 1.2+ or 1.3+, the configured TLS 1.2 ciphers, client certificates
asked for when `client_ca` is set and required with `require_client_cert`); the
gRPC front with `grpc_credentials()`. `watch()` runs as the proxy's task.

Rotation (cert-manager rewriting a mounted Secret, or any rewrite of the files):
every `poll_s` the files' (mtime, size, inode) are compared with what was loaded;
on a change both are read once, checked together in a scratch context (a
certificate and a key that do not match yet — written one after the other — are
retried at the next change, and meanwhile the old pair stays), and the same bytes
are then loaded into the live context, on the event loop, where uvloop makes its
handshakes: a handshake sees the old pair or the new one, never a mix. OpenSSL
copies a context's pair into each connection when it starts, so connections
already open carry on with theirs, and nothing in flight fails. gRPC asks
`_fetch` at each handshake, which hands it the new pair once. The bytes go through
an anonymous in-memory file (memfd), so a read-only root filesystem is fine.
A CA added to `client_ca` is trusted from the next handshake; one removed stays
trusted until a restart (OpenSSL's store only grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from lb.edge.config import ListenTls
from lb.errors import ConfigError

log = logging.getLogger("lb.tls")

READ_TIMEOUT_S = 5.0
Stamp = tuple[tuple[int, int, int] | None, ...]
# peercert() attribute names -> RFC 4514 short names (as OpenSSL and gRPC print them)
_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
          "domainComponent": "DC", "streetAddress": "STREET", "userId": "UID"}


def _stamp(paths: list[str]) -> Stamp:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


@contextlib.contextmanager
def memory_file(data: bytes, name: str) -> Iterator[str]:
    """A path to `data` in an anonymous memory file (for APIs that only take paths)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_pair(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a PEM pair held in memory into `ctx`; ssl.SSLError when they do not match."""
    with memory_file(cert, "tfslb-cert") as cert_path, memory_file(key, "tfslb-key") as key_path:
        ctx.load_cert_chain(cert_path, key_path)


def not_after(cert: bytes) -> float | None:
    """The end of the first certificate's validity (Unix time), None if unreadable."""
    try:
        with memory_file(cert, "tfslb-cert") as path:
            decoded: dict[str, Any] = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        return float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except (ssl.SSLError, OSError, KeyError, ValueError, AttributeError):
        return None


def subject_of(peercert: dict[str, Any] | None) -> str | None:
    """A verified peer certificate's subject as RFC 4514 text ("CN=svc-a,O=ml": the
    most specific part first, as OpenSSL's RFC 2253 output and gRPC print it)."""
    if not peercert:
        return None
    rdns = []
    for rdn in reversed(peercert.get("subject", ())):
        rdns.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(rdns) or None


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


class ServerTls:
    """The fronts' certificate pair and its rotation; see the module docstring."""

    def __init__(self, cfg: ListenTls) -> None:
        self.cfg = cfg
        self._paths = [cfg.cert, cfg.key] + ([cfg.client_ca] if cfg.client_ca else [])
        self.context = self._new_context()
        self.version = 0                # pairs loaded so far (1 after start)
        self.rotations = 0
        self.failures = 0
        self.last_error: str | None = None
        self.loaded_at = 0.0
        self.not_after: float | None = None
        self._seen: Stamp = ()
        self._pair = (b"", b"")          # cert, key: what gRPC is handed
        self._ca: bytes | None = None
        self._grpc_served = 0
        try:
            self._install(*self._read())
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"listen.tls: {exc}") from None

    def _new_context(self) -> ssl.SSLContext:
        cfg = self.cfg
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3"
                               else ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers(cfg.ciphers)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
        if cfg.client_ca is not None:
            ctx.verify_mode = (ssl.CERT_REQUIRED if cfg.require_client_cert
                               else ssl.CERT_OPTIONAL)
        return ctx

    def _read(self) -> tuple[Stamp, bytes, bytes, bytes | None]:
        """Stamps, then the files' bytes, checked together in a scratch context."""
        stamp = _stamp(self._paths)
        cert = Path(self.cfg.cert).read_bytes()
        key = Path(self.cfg.key).read_bytes()
        ca = Path(self.cfg.client_ca).read_bytes() if self.cfg.client_ca else None
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            load_pair(scratch, cert, key)
        except ssl.SSLError as exc:
            raise ssl.SSLError(f"{self.cfg.cert} and {self.cfg.key} cannot be used "
                               f"together: {exc.reason or exc}") from None
        if ca is not None:
            try:
                scratch.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise ssl.SSLError(f"{self.cfg.client_ca}: no CA certificate: {exc}") from None
        return stamp, cert, key, ca

    def _install(self, stamp: Stamp, cert: bytes, key: bytes, ca: bytes | None) -> None:
        """Make the checked pair the live one (on the event loop: see the docstring)."""
        load_pair(self.context, cert, key)
        if ca is not None and ca != self._ca:
            self.context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        self._seen = stamp
        self._pair = (cert, key)
        self._ca = ca
        self.version += 1
        self.loaded_at = time.time()
        self.not_after = not_after(cert)

    # -- gRPC ---------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials of the gRPC front that follow the rotations (asked per handshake).
        Client certificates: grpcio asks for them only when it requires them, so with
        `client_ca` and not `require_client_cert` the gRPC front asks for none."""
        self._grpc_served = self.version
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(), self._fetch,
            require_client_authentication=self.cfg.require_client_cert)

    def _grpc_config(self) -> Any:
        cert, key = self._pair
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=self._ca if self.cfg.require_client_cert else None)

    def _fetch(self) -> Any:
        """Called by gRPC (its own thread) before each handshake: a new config once per
        rotation, else None (keep the current one)."""
        version = self.version
        if version == self._grpc_served:
            return None
        self._grpc_served = version
        return self._grpc_config()

    # -- rotation -------------------------------------------------------------------

    async def watch(self) -> None:
        """Check the files every `poll_s` until cancelled (the proxy's task)."""
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            await self.check()

    async def check(self) -> bool:
        """Load the pair again if its files changed; True when a new pair is in use."""
        before = _stamp(self._paths)
        if before == self._seen:
            return False
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                stamp, cert, key, ca = await asyncio.to_thread(self._read)
        except (OSError, ssl.SSLError, ValueError, TimeoutError) as exc:
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            self._seen = before     # retried at the next change (e.g. the key's rewrite)
            log.warning("TLS pair not reloaded (the previous one stays in use): %s",
                        self.last_error)
            return False
        if (cert, key, ca) == (*self._pair, self._ca):
            self._seen = stamp                   # touched, not changed
            return False
        self._install(stamp, cert, key, ca)
        self.rotations += 1
        self.last_error = None
        log.info("TLS pair reloaded from %s (rotation %d); new handshakes use it",
                 self.cfg.cert, self.rotations)
        return True

    def stats(self) -> dict[str, Any]:
        return {"enabled": True, "rotations": self.rotations, "failures": self.failures,
                "last_error": self.last_error, "loaded_at": self.loaded_at,
                "not_after": self.not_after, "client_certs": (
                    "required" if self.cfg.require_client_cert
                    else "optional" if self.cfg.client_ca else "none")}
