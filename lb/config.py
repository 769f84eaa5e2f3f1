"""The config file: a YAML document validated by pydantic, loaded once.

Called by `tfserving-lb serve` and `check-config` (and by reload later).
`load_config` either returns a fully valid, frozen `Config` or raises
`ConfigError` whose message names the file and every bad field, e.g.
``lb.yaml: nodes.1.weight: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lb.edge.config import AuthConfig, ListenTls, NodeTls, RateLimitConfig
from lb.errors import ConfigError
from lb.rollout.settings import (
    DEFAULT_GROUP,
    GroupName,
    Match,
    RolloutConfig,
    ShadowConfig,
    Share,
    StickyBy,
    check_models,
)

log = logging.getLogger("lb.config")

Positive = Annotated[float, Field(gt=0)]


def yaml_words(true_word: str, false_word: str) -> BeforeValidator:
    """For a setting documented with words like on/off: YAML 1.1 (PyYAML) reads an
    unquoted on/off, yes/no or true/false as a boolean, so map the boolean back to
    the word the user wrote (`cache: on` is `cache: "on"`)."""
    def word(value: Any) -> Any:
        if value is True:
            return true_word
        if value is False:
            return false_word
        return value
    return BeforeValidator(word)


# `models.M.cache`: auto | on | off, with YAML's `on`/`off` (and yes/no) accepted unquoted.
CacheMode = Annotated[Literal["auto", "on", "off"], yaml_words("on", "off")]


class _Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); raises ValueError with the reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


class Listen(_Strict):
    rest: str = "0.0.0.0:8501"
    grpc: str | None = "0.0.0.0:8500"
    admin: str = "127.0.0.1:9901"
    metrics: str | None = None     # GET /metrics alone: read-only, no token (for scrapers)
    tls: ListenTls | None = None        # TLS on the REST and gRPC fronts (lb.edge.config)

    @field_validator("rest", "grpc", "admin", "metrics")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is not None:
            split_hostport(v)
        return v

    @model_validator(mode="after")
    def _distinct_ports(self) -> Listen:
        # Fronts bind with SO_REUSEPORT (for --workers N): two of them on one port
        # would both bind and the kernel would split connections between them.
        seen: dict[int, str] = {}
        for name in ("rest", "grpc", "admin", "metrics"):
            value = getattr(self, name)
            if value is None:
                continue
            port = split_hostport(value)[1]
            if port in seen:
                raise ValueError(f"listen.{name}: port {port} is already used by "
                                 f"listen.{seen[port]}")
            seen[port] = name
        return self


class NodeConfig(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    rest: str
    grpc: str | None = None
    weight: Positive = 1.0              # capacity, relative to the others: seeds the limit
    max_inflight: Annotated[int, Field(ge=1, le=4096)] | None = None   # pins the limit
    group: GroupName = DEFAULT_GROUP     # lb.rollout: splits, shadows and rollouts by group

    @field_validator("rest")
    @classmethod
    def _rest_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port, got {v!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"must be a base URL without path, got {v!r}")
        return v.rstrip("/")

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, v: str | None) -> str | None:
        if v is not None:
            split_hostport(v)
        return v


class BatchingConfig(_Strict):
    """Proxy-side micro-batching of concurrent single-model predicts (opt-in per model)."""

    max_rows: Annotated[int, Field(ge=2, le=4096)] = 64
    # Accepted and no longer used: a batch leaves the proxy's queue when a slot frees.
    max_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0


class ModelConfig(_Strict):
    cost: Positive = 1.0                     # units per row (w_j = rows × cost): /stats' load
    row_cache: bool = False
    hedge: bool = True                       # hedged requests for this model's calls
    batching: BatchingConfig | None = None   # None: requests are sent one by one
    cache: CacheMode = "auto"                # auto: adaptive bypass; on/off: pinned
    # Under overload, sheddable requests are refused first, critical ones last
    # (lb.request.scheduler); a request's X-Priority header may lower this, never raise it.
    priority: Literal["critical", "normal", "sheddable"] = "normal"
    # Routing by node group (lb.rollout; README "Rolling out a model"):
    split: list[Share] | None = None         # None: the group "default" (when routed)
    match: list[Match] = []                  # header == value -> group, before the split
    sticky_by: StickyBy | None = None        # one client, one group (hash over the shares)
    shadow: ShadowConfig | None = None       # copies to a group, answers compared
    rollout: RolloutConfig | None = None     # the split moved step by step, with gates


class ConcurrencyConfig(_Strict):
    """Each node's concurrency limit (lb.pool.concurrency): learned from its replies; a node
    of the largest weight starts at `initial`, the others in proportion to weight."""

    initial: Annotated[float, Field(ge=1, le=4096)] = 6.0
    min: Annotated[int, Field(ge=1, le=4096)] = 1
    max: Annotated[int, Field(ge=1, le=255)] = 64
    learn: bool = True              # false: every node keeps its starting limit
    # requests a node with a settled learned limit may hold beyond it while calls wait,
    # queued at the node so that a slot does not idle for the round trip to the proxy
    # (0: off, the default until bench_policy shows it over two runs)
    prefetch: Annotated[int, Field(ge=0, le=4)] = 0

    @model_validator(mode="after")
    def _ordered(self) -> ConcurrencyConfig:
        if self.min > self.max:
            raise ValueError(f"min: {self.min} is above max ({self.max})")
        return self


class QueueConfig(_Strict):
    """The proxy's queue (lb.request.scheduler): requests wait here for a free slot on a node.
    CoDel: when the oldest request waiting in a model's queue stays older than
    `target_ms` for `interval_ms` and the queue does not drain, it is standing: a
    request is admitted only when expected to leave within half of 2 × target, and
    waits past 2 × target are shed (503 + Retry-After); with `lifo`, the newest are
    served first (off: it turns refusals at once into sheds after a wait)."""

    target_ms: Annotated[float, Field(gt=0, le=60_000)] = 100.0
    interval_ms: Annotated[float, Field(gt=0, le=600_000)] = 100.0
    lifo: bool = False


class PolicyConfig(_Strict):
    name: Literal["least_load", "round_robin", "least_conn"] = "least_load"
    # a stale τ above the pool's least relaxes towards it with this time constant
    tau_relax_s: Positive = 10.0
    window_s: Positive = 10.0
    slow_start_s: Annotated[float, Field(ge=0)] = 5.0   # ramp of a readmitted/added node
    stall_factor: Annotated[float, Field(gt=1)] = 3.0   # oldest in flight > k·τ·units: slow now
    tie_band: Annotated[float, Field(ge=0, le=1)] = 0.2  # scores within 20 % of the least tie
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    queue: QueueConfig = QueueConfig()

    @model_validator(mode="before")
    @classmethod
    def _ewma_decay_s(cls, data: Any) -> Any:
        """`ewma_decay_s`, the old name of `tau_relax_s` (τ is a median, not an EWMA):
        accepted with a warning; both at once is an error."""
        if isinstance(data, dict) and "ewma_decay_s" in data:
            if "tau_relax_s" in data:
                raise ValueError("policy.ewma_decay_s is the old name of "
                                 "policy.tau_relax_s: give only tau_relax_s")
            log.warning("policy.ewma_decay_s is deprecated: call it policy.tau_relax_s")
            data = {k: v for k, v in data.items() if k != "ewma_decay_s"} | {
                "tau_relax_s": data["ewma_decay_s"]}
        return data


class AdaptiveConfig(_Strict):
    """Per-model adaptive bypass (cache.adaptive): a model whose hit rate stays below
    `min_hit_rate` for `patience` windows of `window` lookups stops paying for keys,
    lookups and fills; 1 in `sample_every` of its requests keeps feeding a sketch of
    keys, so that the cache turns itself back on when reuse appears. The fields are
    cache.adaptive.AdaptiveParams' (`AdaptiveParams(**adaptive.model_dump())`)."""

    enabled: bool = True
    min_hit_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    window: Annotated[int, Field(ge=16, le=1_000_000)] = 1000   # lookups per verdict
    sample_every: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    patience: Annotated[int, Field(ge=1, le=100)] = 2           # low windows in a row


class CacheConfig(_Strict):
    backend: Literal["memory", "redis", "tiered", "none"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_s: Positive = 3600.0
    memory_mb: Positive = 64.0
    max_entry_kb: Positive = 1024.0
    redis_timeout_ms: Positive = 50.0
    redis_cluster: bool = False       # redis_url names one node of a Redis Cluster
    admission: Literal["tinylfu", "lru"] = "tinylfu"   # the memory tier's admission/eviction
    # The memory tier's miss-ratio curve (cache.mrc, miniature simulations of the
    # policy that runs): entries its miniatures hold at most (0: no curve) and the
    # initial sampling rate (lowered when they would hold more).
    mrc_keys: Annotated[int, Field(ge=0, le=1_000_000)] = 8192
    mrc_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    adaptive: AdaptiveConfig = AdaptiveConfig()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected redis://, rediss:// or unix://, got {v!r}")
        return v


class UpstreamConfig(_Strict):
    """Per-phase deadlines and pool size for proxy -> node connections."""

    connect_timeout_s: Positive = 1.0
    read_timeout_s: Positive = 30.0
    pool_size: Annotated[int, Field(gt=0, le=10000)] = 256
    keepalive_s: Positive = 30.0
    retries: Annotated[int, Field(ge=0, le=3)] = 1
    try_timeout_s: Positive | None = None       # per attempt; None: the request's deadline
    retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    retry_min_per_s: Annotated[float, Field(ge=0)] = 5.0
    tls: NodeTls | None = None      # CA, client pair, server name for https:// and gRPC nodes


class OutlierConfig(_Strict):
    """Passive outlier detection: consecutive failures eject a node for a back-off."""

    consecutive_errors: Annotated[int, Field(gt=0)] = 3
    base_ejection_s: Positive = 2.0
    max_ejection_s: Positive = 60.0


class HealthConfig(_Strict):
    interval_s: Positive = 2.0
    timeout_s: Positive = 1.0
    unhealthy_after: Annotated[int, Field(gt=0)] = 2
    healthy_after: Annotated[int, Field(gt=0)] = 1


class LimitsConfig(_Strict):
    """What one client may ask of the proxy; past a limit it gets an error, not a queue."""

    max_body_mb: Positive = 64.0                 # 413 past it
    request_timeout_s: Positive = 60.0           # the whole request, retries included: 504
    max_inflight: Annotated[int, Field(gt=0)] = 2048   # 503 + Retry-After past it
    body_timeout_s: Positive = 30.0              # a client sending its body slower: 408
    keepalive_s: Positive = 75.0                 # idle client connections are closed
    max_url_bytes: Annotated[int, Field(ge=256, le=65536)] = 8190
    max_header_bytes: Annotated[int, Field(ge=256, le=65536)] = 8190
    max_headers: Annotated[int, Field(gt=0, le=1024)] = 128
    queue_timeout_s: Positive = 10.0             # wait for a node with the model AVAILABLE
    drain_s: Positive = 10.0                     # SIGTERM: in-flight requests get this long


class GrpcConfig(_Strict):
    """The gRPC front (listen.grpc) and its channels to the nodes' `grpc` addresses."""

    max_message_mb: Annotated[float, Field(gt=0, le=2047)] = 64.0   # gRPC's default is 4
    timeout_s: Positive = 60.0      # a call's deadline: the client's, at most this


class AdminConfig(_Strict):
    """The admin port's guard: with a token, mutating endpoints need `Bearer <token>`."""

    token: str | None = Field(default=None, min_length=8, pattern=r"^\S+$")


class LogConfig(_Strict):
    """The access log (logger `lb.access`): one line per client request."""

    access: bool = False
    format: Literal["text", "json"] = "text"


class ReloadConfig(_Strict):
    """Reload on a change of the config file (polled), besides SIGHUP and POST /reload."""

    watch: bool = True
    poll_s: Annotated[float, Field(ge=0.05, le=60)] = 1.0


class HedgeConfig(_Strict):
    """Hedged requests: an idempotent call that waited longer than its node's p95
    (per node and model, at least `min_delay_ms`) is also sent to the best other
    node; the first good answer wins. Hedges are at most `max_ratio` of requests.
    Off unless enabled (as in Envoy and gRPC): the copies help when nodes have
    spare capacity, and add to the queues when they do not (README, Benchmarks)."""

    enabled: bool = False
    # Rescues: a call on a node that counts as stalled (policy.stall_factor) is copied
    # to a free slot elsewhere, from the same budget. On by default: they only fire
    # on a stall, and win far more often than p95 hedges.
    rescue: bool = True
    max_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_delay_ms: Positive = 5.0
    quantile: Annotated[float, Field(gt=0.5, lt=1)] = 0.95


class DiscoveryConfig(_Strict):
    """Nodes from DNS: every A/AAAA record of `dns` is a node named by its address."""

    dns: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.\-]+$")
    rest_port: Annotated[int, Field(gt=0, lt=65536)] = 8501
    rest_scheme: Literal["http", "https"] = "http"     # https: see upstream.tls
    grpc_port: Annotated[int, Field(gt=0, lt=65536)] | None = 8500
    weight: Positive = 1.0
    group: GroupName = DEFAULT_GROUP     # the group of every discovered node
    interval_s: Annotated[float, Field(ge=0.1)] = 5.0
    timeout_s: Positive = 2.0
    # "ADDR" or "ADDR:port" (IPv6: "ADDR" or "[ADDR]:port"), ADDR an IP address: a
    # nameserver is asked by address, resolving its name would need DNS already.
    # None: the servers and search list of /etc/resolv.conf.
    nameserver: str | None = None

    @field_validator("nameserver")
    @classmethod
    def _nameserver(cls, v: str | None) -> str | None:
        if v is not None:
            cls.parse_nameserver(v)
        return v

    def nameserver_addr(self) -> tuple[str, int] | None:
        """(ip, port) of `nameserver`, or None for the system's resolver."""
        return None if self.nameserver is None else self.parse_nameserver(self.nameserver)

    @staticmethod
    def parse_nameserver(value: str) -> tuple[str, int]:
        """'1.2.3.4', '1.2.3.4:53', 'fd00::1', '[fd00::1]:53' -> (ip, port); else ValueError.
        A bare IPv6 address never has a port ('::1:53' is an address): bracket it."""
        host, port = value, 53
        if value.startswith("[") and value.endswith("]"):
            host = value[1:-1]
        elif value.startswith("[") or value.count(":") == 1:
            host, port = split_hostport(value)
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            raise ValueError("expected an IP address with an optional :port, "
                             f"got {value!r}") from None


class Config(_Strict):
    listen: Listen = Listen()
    nodes: list[NodeConfig] = []
    discovery: DiscoveryConfig | None = None
    models: dict[str, ModelConfig] = {}
    policy: PolicyConfig = PolicyConfig()
    cache: CacheConfig = CacheConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    health: HealthConfig = HealthConfig()
    outlier: OutlierConfig = OutlierConfig()
    limits: LimitsConfig = LimitsConfig()
    grpc: GrpcConfig = GrpcConfig()
    hedge: HedgeConfig = HedgeConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    reload: ReloadConfig = ReloadConfig()
    auth: AuthConfig | None = None          # API keys (lb.edge); None: no key is asked for
    rate_limit: RateLimitConfig = RateLimitConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        if not self.nodes and self.discovery is None:
            raise ValueError("nodes: list at least 1 node, or set discovery")
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"nodes: duplicate node name {node.name!r}")
            seen.add(node.name)
        groups = [n.group for n in self.nodes]
        check_models(groups + ([self.discovery.group] if self.discovery else []), self.models)
        return self

    def model(self, name: str) -> ModelConfig:
        """Per-model settings; models not listed get the defaults."""
        return self.models.get(name, _DEFAULT_MODEL)


_DEFAULT_MODEL = ModelConfig()


def config_version(cfg: Config) -> str:
    """A short digest of a validated config: equal for equal settings (comments and
    key order aside). `/stats` shows it per process, so one version means one config."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]


# Errors of a field that wanted a word or a string: YAML may have read the word.
_WORD_ERRORS = ("literal_error", "string_type", "enum")


def _yaml_hint(err: Any) -> str:
    """For a boolean given where a word was expected: say YAML read the word."""
    value = err.get("input")
    if err["type"] not in _WORD_ERRORS or not isinstance(value, bool):
        return ""
    return (f" (YAML read the unquoted word as the boolean {str(value).lower()}: "
            "on/off, yes/no and true/false are booleans in YAML; quote the word, "
            "e.g. \"on\")")


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"] + _yaml_hint(err)
        if not where:        # a cross-field check: its message starts with the field
            where, _, msg = msg.removeprefix("Value error, ").partition(": ")
            if not msg:
                where, msg = "(top level)", where
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate an already-parsed document; raise ConfigError naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_text(text, source)


def parse_text(text: str, source: str = "<config>") -> Config:
    """Parse and validate a config file's text (a reload pushed by the supervisor)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    return parse_config(data, source)
