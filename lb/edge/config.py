"""The config of the edge: TLS on the fronts and to the nodes, API keys, rate limits.

Imported by `lb.config`, whose `Config` holds these sections (`listen.tls`,
`upstream.tls`, `auth`, `rate_limit`); validated by pydantic like the rest, so a
bad value names its field (``lb.yaml: auth.keys.0.sha256: ...``). Pure: files
named here are read when the proxy starts or reloads (`lb.edge.tls`,
`lb.edge.keys`), not while the config is validated, except for what can be
checked without them (a cipher string OpenSSL does not know, a key hash that is
not 64 hex digits: a plaintext key pasted by mistake is refused, never stored).
"""

from __future__ import annotations

import re
import ssl
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Positive = Annotated[float, Field(gt=0)]

# Mozilla's "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3
# suites are OpenSSL's own (all AEAD), which Python's ssl cannot narrow further.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ID = r"^[A-Za-z0-9_.:@\-]+$"


class _Strict(BaseModel):
    """Unknown keys are errors (as in lb.config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenTls(_Strict):
    """TLS on both fronts (REST and gRPC) with one certificate pair.

    The files are watched: when `cert` or `key` change (cert-manager rewriting a
    mounted Secret), new handshakes use the new pair; open connections carry on."""

    cert: str = Field(min_length=1)         # PEM: the certificate, then its chain
    key: str = Field(min_length=1)          # PEM private key (unencrypted)
    client_ca: str | None = None            # PEM bundle: client certificates are asked for
    require_client_cert: bool = False       # true: no handshake without a valid one (mTLS)
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str = INTERMEDIATE_CIPHERS     # OpenSSL cipher string for TLS 1.2
    handshake_timeout_s: Positive = 10.0
    poll_s: Annotated[float, Field(ge=0.05, le=60)] = 1.0   # how often the files are checked

    @field_validator("ciphers")
    @classmethod
    def _ciphers(cls, v: str) -> str:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL knows no cipher in {v!r}") from None
        return v

    @model_validator(mode="after")
    def _mtls(self) -> ListenTls:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("listen.tls.require_client_cert: needs client_ca")
        return self


class NodeTls(_Strict):
    """TLS from the proxy to the nodes: REST to `https://` node URLs, gRPC when `grpc`."""

    ca: str | None = None                   # PEM bundle the nodes' certificates chain to;
                                            # null: the system's trust store
    cert: str | None = None                 # client certificate (mTLS), with `key`
    key: str | None = None
    server_name: str | None = Field(default=None, min_length=1, max_length=253)
                                            # name the nodes' certificates must carry (and
                                            # SNI); null: the host of each node's address
    grpc: bool = False                      # gRPC channels to the nodes use TLS

    @model_validator(mode="after")
    def _pair(self) -> NodeTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("upstream.tls: cert and key go together")
        return self


class RateLimit(_Strict):
    """One key's budget: requests/s and rows/s (either or both), with a burst."""

    requests_per_s: Positive | None = None
    rows_per_s: Positive | None = None
    burst_s: Annotated[float, Field(gt=0, le=3600)] = 1.0   # depth: rate x burst_s
    per_model: bool = False     # one budget per model the key calls, not one for the key


class ApiKey(_Strict):
    """A client identity: the SHA-256 of its key(s) and/or a client certificate subject."""

    id: str = Field(min_length=1, max_length=64, pattern=_ID)   # in logs, /stats, /metrics
    sha256: list[str] = []      # hex digests of the key (several: a rotation in progress)
    subject: str | None = Field(default=None, min_length=1)  # e.g. "CN=svc-a,O=ml" (RFC 4514)
    models: list[str] = ["*"]   # globs of the models it may call
    limits: RateLimit | None = None

    @field_validator("sha256", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        out = []
        for digest in v:
            digest = digest.strip().lower()
            if not _HEX64.match(digest):
                raise ValueError("expected the hex SHA-256 of the key (64 hex digits, "
                                 "e.g. `printf %s \"$KEY\" | sha256sum`), never the key itself")
            out.append(digest)
        return out

    @model_validator(mode="after")
    def _identity(self) -> ApiKey:
        if not self.sha256 and self.subject is None:
            raise ValueError(f"auth.keys: key {self.id!r} needs sha256 or subject")
        return self


class KeysFile(_Strict):
    """The shape of `auth.keys_file`: more keys, reloaded with the config."""

    keys: list[ApiKey] = []


Openable = Literal["health", "status", "metadata"]


class AuthConfig(_Strict):
    """API keys on both fronts. Present (even empty): every request needs a key,
    except the kinds listed in `open`."""

    keys: list[ApiKey] = []
    keys_file: str | None = None
    open: list[Openable] = ["health"]       # health: /healthz, /readyz, grpc.health.v1;
                                            # status: model status; metadata: model metadata
    max_key_bytes: Annotated[int, Field(ge=16, le=8192)] = 512   # longer: 401 malformed

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        check_unique(self.keys, "auth.keys")
        return self


def check_unique(keys: list[ApiKey], where: str) -> None:
    """Ids, hashes and subjects each name one key; raises ValueError naming the field."""
    ids: set[str] = set()
    digests: set[str] = set()
    subjects: set[str] = set()
    for key in keys:
        if key.id in ids:
            raise ValueError(f"{where}: duplicate key id {key.id!r}")
        ids.add(key.id)
        for digest in key.sha256:
            if digest in digests:
                raise ValueError(f"{where}: key {key.id!r} repeats a hash of another key")
            digests.add(digest)
        if key.subject is not None:
            if key.subject in subjects:
                raise ValueError(f"{where}: key {key.id!r} repeats the subject of another key")
            subjects.add(key.subject)


class RateLimitConfig(_Strict):
    """Where the budgets of `auth.keys[].limits` are kept."""

    shared: Literal["local", "redis"] = "local"     # redis: every replica draws on one budget
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_ms: Positive = 20.0       # a slower Redis: this check uses the local bucket
    retry_s: Positive = 1.0                 # after a Redis failure, local buckets this long

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected redis://, rediss:// or unix://, got {v!r}")
        return v
