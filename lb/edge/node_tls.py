"""TLS from the proxy to the nodes: the REST pools' SSLContext, gRPC channel credentials.

Called by `lb.rest.upstream.RestUpstream` (one context for every `https://` node:
pools, health checks, metadata and discovered nodes all go through it) and by
`lb.grpc.upstream.GrpcUpstream` (secure channels when `upstream.tls.grpc`), each
once when it is built from `upstream.tls`. Guarantees: certificates are verified
against `ca` (or the system's store) and the node's name — its address's host, or
`server_name` for every node when set (nodes addressed by IP, as discovery finds
them, with certificates issued to a Service name); TLS 1.2 or later; with `cert`
and `key` the proxy presents them (mTLS). A file that cannot be used raises
`ConfigError` naming the field, at start.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from lb.edge.config import NodeTls
from lb.errors import ConfigError


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"upstream.tls.{field}: cannot read {path}: "
                          f"{exc.strerror or exc}") from None


def rest_context(tls: NodeTls | None) -> ssl.SSLContext:
    """The context of every https:// node pool (the system's defaults without `tls`)."""
    if tls is None:
        return ssl.create_default_context()
    try:
        ctx = ssl.create_default_context(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"upstream.tls.ca: {tls.ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if tls.cert is not None and tls.key is not None:
        try:
            ctx.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"upstream.tls.cert: {tls.cert} with {tls.key}: {exc}") from None
    return ctx


def grpc_credentials(tls: NodeTls | None) -> grpc.ChannelCredentials | None:
    """Channel credentials when gRPC to the nodes uses TLS, else None (plaintext)."""
    if tls is None or not tls.grpc:
        return None
    root = _read(tls.ca, "ca") if tls.ca is not None else None
    key = _read(tls.key, "key") if tls.key is not None else None
    chain = _read(tls.cert, "cert") if tls.cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=chain)


def grpc_options(tls: NodeTls | None) -> list[tuple[str, str]]:
    """Channel options: the name the nodes' certificates must carry, when overridden."""
    if tls is None or not tls.grpc or tls.server_name is None:
        return []
    return [("grpc.ssl_target_name_override", tls.server_name)]
