"""deploy/k8s renders, fits the Kubernetes schemas and agrees with the proxy's config.

Called by pytest, offline, no cluster. Each kustomization (the example overlay, the
TLS overlay and the base) is rendered with `kubectl kustomize` (`$KUBECTL` names
another binary: CI has Debian's kubectl 1.20 with kustomize v2.0.3), every object
but cert-manager's is validated with kubernetes-validate in strict mode (check_tls
reads those), and the objects are checked against one
another and against lb.yaml parsed by `lb.config.parse_config`. Guarantees: each
`check_*` raises AssertionError on the defect it names; the mutation tests at the
end feed key checks a broken copy of a render to show that they can fail.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from lb.config import Config, parse_config, split_hostport
from lb.edge.config import KeysFile
from lb.errors import ConfigError
from tests.procs import ROOT

K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())   # oldest we claim, newest
KUSTOMIZATIONS = ("deploy/k8s/overlays/example", "deploy/k8s/base",
                  "deploy/k8s/overlays/example-prometheus-operator", "deploy/k8s/overlays/tls")
# Custom resources: no Kubernetes schema; check_service_monitor and check_tls check them.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CERT_MANAGER = "cert-manager.io/v1"      # CRDs: not in the Kubernetes schemas (check_tls)
MONITORING_NS = {"kubernetes.io/metadata.name": "monitoring"}
PROXY, TF, REDIS = "tfserving-lb", "tf-serving", "tfslb-redis"    # Deployment names
TF_IMAGE_PORTS = {"grpc": 8500, "rest": 8501}    # tensorflow/serving's entrypoint defaults
MARGIN_S = 5              # grace beyond preStop + drain: closing pools and Redis
Obj = dict[str, Any]


def render(path: str) -> list[Obj]:
    kubectl = os.environ.get("KUBECTL", "kubectl")
    assert shutil.which(kubectl), f"{kubectl} not found: scripts/setup.sh installs it"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return render(request.param)


# --- lookups -----------------------------------------------------------------------

def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod(objs: list[Obj], deployment: str) -> Obj:
    return one(objs, "Deployment", deployment)["spec"]["template"]  # type: ignore[no-any-return]


def container(objs: list[Obj], deployment: str) -> Obj:
    (c,) = pod(objs, deployment)["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """A matchLabels selector picks these labels (an empty selector is not accepted)."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def container_port(c: Obj, port: int | str) -> int:
    """A port of the container by number or name (targetPort, probe port)."""
    for p in c.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    raise AssertionError(f"container {c['name']} declares no port {port!r}")


def target_port(c: Obj, service_port: Obj) -> int:
    """The container port a Service port sends to."""
    return container_port(c, cast("int | str",
                                  service_port.get("targetPort", service_port["port"])))


def config_map(objs: list[Obj]) -> tuple[Obj, str]:
    """The ConfigMap the proxy reads and the key its --config names."""
    c, spec = container(objs, PROXY), pod(objs, PROXY)["spec"]
    path = c["command"][c["command"].index("--config") + 1]
    (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert "subPath" not in mount, "a subPath mount never sees a changed ConfigMap"
    (vol,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return one(objs, "ConfigMap", vol["configMap"]["name"]), path[len(mount["mountPath"]) + 1:]


def config(objs: list[Obj]) -> Config:
    cm, key = config_map(objs)
    try:
        return parse_config(yaml.safe_load(cm["data"][key]), key)
    except ConfigError as exc:
        raise AssertionError(str(exc)) from None


def namespace(objs: list[Obj]) -> str:
    spaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert len(spaces) == 1 and None not in spaces, f"one namespace for all: {spaces}"
    return spaces.pop()  # type: ignore[no-any-return]


# --- checks --------------------------------------------------------------------------

def check_config(objs: list[Obj]) -> None:
    cfg = config(objs)                      # lb.yaml validates as `check-config` would
    assert cfg.listen.grpc is not None, "the gRPC front is the point of per-call balancing"


def check_schemas(objs: list[Obj]) -> None:
    core = [o for o in objs if (o["apiVersion"], o["kind"]) not in CUSTOM
            and o["apiVersion"] != CERT_MANAGER]
    for o, version in ((o, v) for o in core for v in K8S_VERSIONS):
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{o['kind']}/{o['metadata']['name']} ({version}): "
                                 f"{exc.message}") from None


def check_ports(objs: list[Obj]) -> None:
    cfg, c = config(objs), container(objs, PROXY)
    assert cfg.listen.grpc is not None
    fronts = {"rest": split_hostport(cfg.listen.rest), "grpc": split_hostport(cfg.listen.grpc)}
    for name, (host, port) in fronts.items():
        assert host in ("0.0.0.0", "::"), f"listen.{name} must bind all addresses: {host}"
        assert container_port(c, name) == port, f"containerPort {name} != listen.{name}"
    svc = one(objs, "Service", PROXY)
    targets = {target_port(c, p): p for p in svc["spec"]["ports"]}
    assert set(targets) == {port for _, port in fronts.values()}, "Service targetPorts"
    grpc, rest = targets[fronts["grpc"][1]], targets[fronts["rest"][1]]
    if cfg.listen.tls is None:
        assert grpc.get("appProtocol") in ("kubernetes.io/h2c", "grpc") \
            and grpc["name"].startswith("grpc"), "meshes must see the gRPC port as h2c"
    else:                   # TLS from the client: a mesh must not take it for plaintext
        assert grpc.get("appProtocol") == "tls" and grpc["name"].startswith("grpc"), \
            "the gRPC port over TLS is opaque TLS to a mesh, not h2c"
        assert rest.get("appProtocol") == "https", "the REST port over TLS is https"


def check_admin_not_exposed(objs: list[Obj]) -> None:
    host, port = split_hostport(config(objs).listen.admin)
    assert host in ("127.0.0.1", "::1", "localhost"), "the admin port has POST /reload"
    c, labels = container(objs, PROXY), pod(objs, PROXY)["metadata"]["labels"]
    assert all(p["containerPort"] != port for p in c["ports"]), "admin as a containerPort"
    for svc in find(objs, "Service"):
        if matches(svc["spec"].get("selector"), labels):
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                number = target if isinstance(target, int) else target_port(c, p)
                assert number != port, f"Service {svc['metadata']['name']} exposes admin"


def _metrics_services(objs: list[Obj]) -> list[Obj]:
    """The Services that send to the proxy's metrics port."""
    c, labels = container(objs, PROXY), pod(objs, PROXY)["metadata"]["labels"]
    port = split_hostport(str(config(objs).listen.metrics))[1]
    return [svc for svc in find(objs, "Service") if matches(svc["spec"].get("selector"), labels)
            and any(target_port(c, p) == port for p in svc["spec"]["ports"])]


def check_metrics_port(objs: list[Obj]) -> None:
    cfg, c = config(objs), container(objs, PROXY)
    assert cfg.listen.metrics is not None, "listen.metrics: Prometheus scrapes it"
    host, port = split_hostport(cfg.listen.metrics)
    assert host in ("0.0.0.0", "::"), f"listen.metrics must bind all addresses: {host}"
    assert container_port(c, "metrics") == port, "containerPort metrics != listen.metrics"
    notes = pod(objs, PROXY)["metadata"].get("annotations", {})
    assert (notes.get("prometheus.io/scrape"), notes.get("prometheus.io/port"),
            notes.get("prometheus.io/path")) == ("true", str(port), "/metrics"), notes
    (svc,) = _metrics_services(objs)
    assert [target_port(c, p) for p in svc["spec"]["ports"]] == [port], "metrics alone"
    proxy = pod(objs, PROXY)["metadata"]["labels"]
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    assert allowed(objs, "Ingress", proxy, prometheus, port, peer_ns=MONITORING_NS)
    other = {"kubernetes.io/metadata.name": "other"}
    assert not allowed(objs, "Ingress", proxy, prometheus, port, peer_ns=other)
    assert not allowed(objs, "Ingress", proxy, {"app": "some-client"}, port), "same namespace"


def check_service_monitor(objs: list[Obj]) -> None:
    """Each ServiceMonitor selects the metrics Service and scrapes its metrics port."""
    for sm in find(objs, "ServiceMonitor"):
        assert sm["metadata"].get("namespace") == namespace(objs)
        picked = [svc for svc in find(objs, "Service")
                  if matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])]
        assert picked == _metrics_services(objs), [p["metadata"]["name"] for p in picked]
        names = {p["name"] for p in picked[0]["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["port"] in names, f"no Service port named {endpoint['port']}"
            assert endpoint.get("path", "/metrics") == "/metrics"
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}


def check_probes(objs: list[Obj]) -> None:
    c = container(objs, PROXY)
    rest = split_hostport(config(objs).listen.rest)[1]
    cfg = config(objs)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} path {get['path']}"
        scheme = "HTTPS" if cfg.listen.tls is not None else "HTTP"
        assert get.get("scheme", "HTTP") == scheme, f"{probe} scheme: the REST port is {scheme}"
        assert cfg.listen.tls is None or not cfg.listen.tls.require_client_cert, \
            "the kubelet's probes send no client certificate"
        assert cfg.auth is None or "health" in cfg.auth.open, "the probes send no API key"
        assert container_port(c, get["port"]) == rest, f"{probe} is not on the REST port"


def check_drain(objs: list[Obj]) -> None:
    c, spec = container(objs, PROXY), pod(objs, PROXY)["spec"]
    command = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    found = re.fullmatch(r"(?:/bin/sh -c )?sleep (\d+)", command)
    assert found, f"preStop is not a sleep: {command}"
    need = int(found[1]) + config(objs).limits.drain_s + MARGIN_S
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= need, f"terminationGracePeriodSeconds {grace} < preStop + drain_s + {MARGIN_S}"


def check_selectors(objs: list[Obj]) -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in find(objs, "Deployment")}
    for d in find(objs, "Deployment"):
        assert matches(d["spec"]["selector"]["matchLabels"], pods[d["metadata"]["name"]])
    for svc in find(objs, "Service"):
        name = svc["metadata"]["name"]
        picked = [n for n, labels in pods.items() if matches(svc["spec"]["selector"], labels)]
        assert len(picked) == 1 and (name == picked[0] or name.startswith(picked[0] + "-")), \
            f"Service {name}: {picked}"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in find(objs, kind):
            sel = o["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
            assert "matchExpressions" not in sel
            picked = [n for n, labels in pods.items() if matches(sel["matchLabels"], labels)]
            assert picked == [o["metadata"]["name"]], f"{kind} {o['metadata']['name']}: {picked}"
    for c in pod(objs, PROXY)["spec"].get("topologySpreadConstraints", []):
        assert matches(c["labelSelector"]["matchLabels"], pods[PROXY])
    (hpa,) = find(objs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", PROXY)


def check_scaling(objs: list[Obj]) -> None:
    spec = one(objs, "HorizontalPodAutoscaler", PROXY)["spec"]
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu", "CPU is what a proxy pod runs out of"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(objs, PROXY)["resources"]["requests"], "HPA needs a CPU request"
    assert 2 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert spec["minReplicas"] <= one(objs, "Deployment", PROXY)["spec"]["replicas"] \
        <= spec["maxReplicas"]
    pdb = one(objs, "PodDisruptionBudget", PROXY)["spec"]
    assert pdb.get("maxUnavailable", 0) < spec["minReplicas"] \
        and pdb.get("minAvailable", 0) < spec["minReplicas"], "a node drain must proceed"


def _dns_names(service: str, ns: str) -> set[str]:
    return {service, f"{service}.{ns}", f"{service}.{ns}.svc", f"{service}.{ns}.svc.cluster.local"}


def check_discovery(objs: list[Obj]) -> None:
    cfg, ns = config(objs), namespace(objs)
    assert cfg.discovery is not None and not cfg.nodes, "nodes come from DNS"
    assert cfg.discovery.dns.rstrip(".") == f"{TF}.{ns}.svc.cluster.local", cfg.discovery.dns
    svc, c = one(objs, "Service", TF), container(objs, TF)
    assert svc["spec"].get("clusterIP") == "None", "one DNS record per pod needs a headless Service"
    # Records are pod addresses: the proxy dials the containers' ports, not the Service's.
    ports = {"rest": cfg.discovery.rest_port, "grpc": cfg.discovery.grpc_port}
    assert {n: container_port(c, n) for n in ports} == ports == TF_IMAGE_PORTS, \
        f"discovery ports {ports}, TF Serving listens on {TF_IMAGE_PORTS}"
    assert {target_port(c, p) for p in svc["spec"]["ports"]} == set(ports.values())
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["MODEL_NAME"] in cfg.models and not c.get("args"), "the image's ports and model"
    if find(objs, "Namespace"):
        one(objs, "Namespace", ns)


def _bytes(size: str) -> int:
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi|kb|mb|gb)?", size)
    assert found, size
    unit = (found[2] or "").lower().replace("i", "b")
    return int(found[1]) * {"": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30}[unit]


def check_redis(objs: list[Obj]) -> None:
    cfg, ns = config(objs), namespace(objs)
    assert cfg.cache.backend in ("redis", "tiered"), "replicas share the cache"
    url, svc = urlsplit(cfg.cache.redis_url), one(objs, "Service", REDIS)
    assert url.hostname in _dns_names(REDIS, ns), f"redis_url host {url.hostname}"
    ports = [p for p in svc["spec"]["ports"] if p["port"] == (url.port or 6379)]
    assert len(ports) == 1, f"Service {REDIS} has no port {url.port}"
    port = ports[0]
    c = container(objs, REDIS)
    assert target_port(c, port) == 6379, "the Service reaches Redis' port"
    args = c["args"]
    assert args[args.index("--maxmemory-policy") + 1].startswith("allkeys-"), "evict any key"
    limit = _bytes(c["resources"]["limits"]["memory"])
    assert _bytes(args[args.index("--maxmemory") + 1]) <= 0.8 * limit, "room beyond the data"
    proxy_limit = _bytes(container(objs, PROXY)["resources"]["limits"]["memory"])
    assert cfg.cache.memory_mb * 2**20 <= proxy_limit / 2, "memory tier vs the proxy's limit"


def check_security(objs: list[Obj]) -> None:
    for d in find(objs, "Deployment"):
        spec, name = d["spec"]["template"]["spec"], d["metadata"]["name"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, f"{name}: root"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: writable root fs"
            assert sc.get("capabilities") == {"drop": ["ALL"]}, f"{name}: capabilities"
            assert not sc.get("privileged"), f"{name}: privileged"
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"{name} {kind}"
    c = container(objs, PROXY)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "no .pyc on a read-only root"
    dockerfile = (ROOT / "scripts" / "docker" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+)", dockerfile, re.M)
    assert pod(objs, PROXY)["spec"]["securityContext"]["runAsUser"] == int(user)


def _peer_ok(peer: Obj, labels: dict[str, str], ns_labels: dict[str, str] | None) -> bool:
    """Does a NetworkPolicy peer admit a pod? ns_labels None: the policy's namespace."""
    if "ipBlock" in peer:
        return True                          # addresses, not pods: treat as admitting all
    if "namespaceSelector" in peer:
        ns_sel = peer["namespaceSelector"].get("matchLabels", {})
        if ns_sel and not matches(ns_sel, ns_labels or {}):
            return False
    elif ns_labels is not None:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _selects(pod_selector: Obj, labels: dict[str, str]) -> bool:
    """A policy's podSelector: an empty one selects every pod of the namespace."""
    sel = pod_selector.get("matchLabels")
    return not sel or matches(sel, labels)


def allowed(objs: list[Obj], direction: str, selected: dict[str, str], peer: dict[str, str],
            port: int, protocol: str = "TCP", peer_ns: dict[str, str] | None = None) -> bool:
    """Do the NetworkPolicies let `selected` pods talk (ingress/egress) with `peer` pods?"""
    key, rules_key = ("from", "ingress") if direction == "Ingress" else ("to", "egress")
    policies = [p["spec"] for p in find(objs, "NetworkPolicy")
                if _selects(p["spec"]["podSelector"], selected)
                and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return True                          # not isolated in this direction
    for rule in (r for p in policies for r in p.get(rules_key, [])):
        ports = rule.get("ports", [])
        if ports and not any(p.get("port") in (None, port)
                             and p.get("protocol", "TCP") == protocol for p in ports):
            continue
        if not rule.get(key) or any(_peer_ok(x, peer, peer_ns) for x in rule[key]):
            return True
    return False


def check_network_policy(objs: list[Obj]) -> None:
    cfg = config(objs)
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
              for d in find(objs, "Deployment")}
    client, anywhere = {"app": "some-client"}, {"kubernetes.io/metadata.name": "other"}
    proxy, tf, redis = labels[PROXY], labels[TF], labels[REDIS]
    assert cfg.listen.grpc is not None and cfg.discovery is not None
    assert cfg.discovery.grpc_port is not None
    fronts = [split_hostport(a)[1] for a in (cfg.listen.rest, cfg.listen.grpc)]
    for port in fronts:
        assert allowed(objs, "Ingress", proxy, client, port, peer_ns=anywhere), port
    assert not allowed(objs, "Ingress", proxy, client, split_hostport(cfg.listen.admin)[1])
    for other in (client, tf, redis):
        assert not allowed(objs, "Ingress", redis, other, 6379), f"{other} reaches Redis"
        assert not allowed(objs, "Ingress", redis, other, 6379, peer_ns=anywhere)
    assert allowed(objs, "Ingress", redis, proxy, 6379), "proxy pods reach Redis"
    assert not allowed(objs, "Egress", redis, client, 443, peer_ns=anywhere)
    needs = [(tf, cfg.discovery.rest_port, "TCP", None), (tf, cfg.discovery.grpc_port, "TCP", None),
             (redis, 6379, "TCP", None), ({"k8s-app": "kube-dns"}, 53, "UDP", anywhere),
             ({"k8s-app": "kube-dns"}, 53, "TCP", anywhere)]
    for peer, port, proto, ns in needs:
        assert allowed(objs, "Egress", proxy, peer, port, proto, ns), f"proxy -> {peer}:{port}"
    assert not allowed(objs, "Egress", proxy, client, 443, peer_ns=anywhere), "egress is open"


def check_rollout(objs: list[Obj]) -> None:
    cm, _ = config_map(objs)
    assert re.fullmatch(r"tfserving-lb-config-[a-z0-9]{10}", cm["metadata"]["name"]), \
        "a hashed ConfigMap name: a config change rolls the Deployment"
    assert config(objs).reload.watch is False, "the file never changes in place"
    strategy = one(objs, "Deployment", PROXY)["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a new pod is ready before an old one drains"


def mounted(objs: list[Obj], path: str) -> Obj:
    """The volume whose mount holds `path` in the proxy container (no subPath: updates
    of a Secret or ConfigMap then reach the running pod)."""
    c, spec = container(objs, PROXY), pod(objs, PROXY)["spec"]
    found = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(found) == 1, f"{path}: mounted {len(found)} times"
    assert "subPath" not in found[0], f"{path}: a subPath mount never sees a rotation"
    (vol,) = [v for v in spec["volumes"] if v["name"] == found[0]["name"]]
    return vol  # type: ignore[no-any-return]


def check_tls(objs: list[Obj]) -> None:
    """listen.tls reads the Secret a cert-manager Certificate keeps, for the Service's
    names; the keys file is a mounted Secret. Nothing to check without listen.tls."""
    cfg = config(objs)
    tls = cfg.listen.tls
    if tls is None:
        assert not find(objs, "Certificate"), "a Certificate nobody mounts"
        return
    cert_vol, key_vol = mounted(objs, tls.cert), mounted(objs, tls.key)
    assert cert_vol == key_vol and "secret" in cert_vol, "cert and key from one Secret"
    secret = cert_vol["secret"]["secretName"]
    (certificate,) = [o for o in find(objs, "Certificate")
                      if o["spec"]["secretName"] == secret]
    assert certificate["apiVersion"] == CERT_MANAGER
    spec = certificate["spec"]
    assert tls.cert.endswith("/tls.crt") and tls.key.endswith("/tls.key"), \
        "cert-manager writes tls.crt and tls.key"
    issuer = spec["issuerRef"]
    assert find(objs, issuer.get("kind", "Issuer"), issuer["name"]) or \
        issuer.get("kind") == "ClusterIssuer", f"issuer {issuer['name']} is not in the render"
    ns = namespace(objs)
    assert f"{PROXY}.{ns}.svc.cluster.local" in spec["dnsNames"], "the Service's name"
    assert spec["privateKey"].get("rotationPolicy") == "Always"
    if cfg.auth is not None and cfg.auth.keys_file is not None:
        vol = mounted(objs, cfg.auth.keys_file)
        assert "secret" in vol, "API keys (hashes) come from a Secret"
        (sec,) = find(objs, "Secret", vol["secret"]["secretName"])
        name = cfg.auth.keys_file.rsplit("/", 1)[1]
        try:                                # ids and hashes, as the proxy reads them
            KeysFile.model_validate(yaml.safe_load(base64.b64decode(sec["data"][name])))
        except (KeyError, ValidationError) as exc:
            raise AssertionError(f"keys file {name}: {exc}") from None


CHECKS: list[Callable[[list[Obj]], None]] = [
    check_schemas, check_config, check_ports, check_admin_not_exposed, check_probes, check_drain,
    check_selectors, check_scaling, check_discovery, check_redis, check_security,
    check_network_policy, check_rollout, check_metrics_port, check_service_monitor,
    check_tls,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_render(objs: list[Obj], check: Callable[[list[Obj]], None]) -> None:
    check(objs)


def test_overlay_tweaks_the_base() -> None:
    base, overlay = render(KUSTOMIZATIONS[1]), render(KUSTOMIZATIONS[0])
    assert namespace(base) != namespace(overlay)
    assert one(overlay, "Namespace", namespace(overlay))["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "restricted"
    for name in (PROXY, TF, REDIS):
        image = container(overlay, name)["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: pinned tag, got {image}"
    assert one(base, "Deployment", PROXY)["spec"]["replicas"] \
        != one(overlay, "Deployment", PROXY)["spec"]["replicas"]
    assert container(base, PROXY)["resources"] != container(overlay, PROXY)["resources"]


# --- the checks can fail -------------------------------------------------------------

def edit_config(objs: list[Obj], edit: Callable[[dict[str, Any]], None]) -> None:
    cm, key = config_map(objs)
    doc = yaml.safe_load(cm["data"][key])
    edit(doc)
    cm["data"][key] = yaml.safe_dump(doc)


def _set_port(objs: list[Obj], name: str, value: int) -> None:
    next(p for p in container(objs, PROXY)["ports"] if p["name"] == name)["containerPort"] = value


def _expose_admin(objs: list[Obj]) -> None:
    container(objs, PROXY)["ports"].append({"name": "admin", "containerPort": 9901})
    one(objs, "Service", PROXY)["spec"]["ports"].append({"name": "admin", "port": 9901,
                                                        "targetPort": "admin"})


def _open_redis(objs: list[Obj]) -> None:
    rule = one(objs, "NetworkPolicy", REDIS)["spec"]["ingress"][0]
    rule["from"].append({"namespaceSelector": {}})


MUTATIONS: dict[str, tuple[Callable[[list[Obj]], None], Callable[[list[Obj]], None]]] = {
    "unknown field": (check_schemas, lambda o: container(o, PROXY).update(bogus=1)),
    "wrong type": (check_schemas, lambda o: one(o, "Deployment", PROXY)["spec"].update(
        replicas="two")),
    "bad lb.yaml": (check_config, lambda o: edit_config(o, lambda d: d.update(typo=1))),
    "container port": (check_ports, lambda o: _set_port(o, "rest", 8080)),
    "loopback front": (check_ports, lambda o: edit_config(
        o, lambda d: d["listen"].update(grpc="127.0.0.1:8500"))),
    "admin exposed": (check_admin_not_exposed, _expose_admin),
    "admin service": (check_admin_not_exposed, lambda o: one(o, "Service", PROXY)["spec"][
        "ports"].append({"name": "admin", "port": 80, "targetPort": 9901})),
    "admin on all": (check_admin_not_exposed, lambda o: edit_config(
        o, lambda d: d["listen"].update(admin="0.0.0.0:9901"))),
    "probe path": (check_probes, lambda o: container(o, PROXY)["readinessProbe"]["httpGet"]
                   .update(path="/healthz")),
    "short grace": (check_drain, lambda o: pod(o, PROXY)["spec"].update(
        terminationGracePeriodSeconds=12)),
    "long drain": (check_drain, lambda o: edit_config(
        o, lambda d: d["limits"].update(drain_s=30))),
    "service selector": (check_selectors, lambda o: one(o, "Service", PROXY)["spec"][
        "selector"].update({"app.kubernetes.io/name": "tfserving"})),
    "pdb selector": (check_selectors, lambda o: one(o, "PodDisruptionBudget", PROXY)["spec"][
        "selector"]["matchLabels"].update({"app.kubernetes.io/component": "cache"})),
    "dns namespace": (check_discovery, lambda o: edit_config(
        o, lambda d: d["discovery"].update(dns="tf-serving.default.svc.cluster.local"))),
    "not headless": (check_discovery, lambda o: one(o, "Service", TF)["spec"].pop("clusterIP")),
    "discovery port": (check_discovery, lambda o: edit_config(
        o, lambda d: d["discovery"].update(grpc_port=9000))),
    "redis port": (check_redis, lambda o: edit_config(
        o, lambda d: d["cache"].update(redis_url="redis://tfslb-redis:6380/0"))),
    "no eviction": (check_redis, lambda o: container(o, REDIS)["args"].__setitem__(
        container(o, REDIS)["args"].index("allkeys-lru"), "noeviction")),
    "writable root": (check_security, lambda o: container(o, TF)["securityContext"].update(
        readOnlyRootFilesystem=False)),
    "capabilities": (check_security, lambda o: container(o, PROXY)["securityContext"].update(
        capabilities={"drop": ["NET_RAW"]})),
    "root": (check_security, lambda o: pod(o, REDIS)["spec"]["securityContext"].update(
        runAsUser=0)),
    "redis open": (check_network_policy, _open_redis),
    "redis any pod": (check_network_policy, lambda o: one(o, "NetworkPolicy", REDIS)["spec"][
        "ingress"][0].pop("from")),
    "allow-all added": (check_network_policy, lambda o: o.append({   # policies add up
        "kind": "NetworkPolicy", "metadata": {"name": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}})),
    "no dns": (check_network_policy, lambda o: one(o, "NetworkPolicy", PROXY)["spec"][
        "egress"].pop()),
    "in-place config": (check_rollout, lambda o: edit_config(
        o, lambda d: d["reload"].update(watch=True))),
    "metrics on loopback": (check_metrics_port, lambda o: edit_config(
        o, lambda d: d["listen"].update(metrics="127.0.0.1:9902"))),
    "no scrape annotation": (check_metrics_port, lambda o: pod(o, PROXY)["metadata"][
        "annotations"].pop("prometheus.io/scrape")),
    "metrics port open": (check_metrics_port, lambda o: one(o, "NetworkPolicy", PROXY)["spec"][
        "ingress"][1]["from"].append({"namespaceSelector": {}})),
    "metrics port to clients": (check_metrics_port, lambda o: one(o, "NetworkPolicy", PROXY)[
        "spec"]["ingress"][0]["ports"].append({"port": 9902, "protocol": "TCP"})),
    "admin in metrics service": (check_metrics_port, lambda o: one(
        o, "Service", f"{PROXY}-metrics")["spec"]["ports"].append(
        {"name": "admin", "port": 9901, "targetPort": 9901})),
}


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return render(KUSTOMIZATIONS[0])


@pytest.mark.parametrize("name", MUTATIONS)
def test_check_catches(overlay: list[Obj], name: str) -> None:
    check, mutate = MUTATIONS[name]
    broken = copy.deepcopy(overlay)
    check(broken)                            # passes before the mutation ...
    mutate(broken)
    with pytest.raises(AssertionError):      # ... and fails after it
        check(broken)


def test_the_operator_overlay_adds_a_service_monitor() -> None:
    objs = render(KUSTOMIZATIONS[2])
    assert len(find(objs, "ServiceMonitor")) == 1
    check_service_monitor(objs)
    breaks: list[Callable[[Obj], None]] = [
        lambda sm: sm["spec"]["endpoints"][0].update(port="http"),
        lambda sm: sm["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "proxy"})]
    for break_it in breaks:
        broken = copy.deepcopy(objs)
        break_it(one(broken, "ServiceMonitor", PROXY))
        with pytest.raises(AssertionError):
            check_service_monitor(broken)
def _tls_mount(objs: list[Obj]) -> Obj:
    return next(m for m in container(objs, PROXY)["volumeMounts"] if m["name"] == "tls")


def _certificate(objs: list[Obj]) -> Obj:
    (certificate,) = find(objs, "Certificate")
    return certificate


def _keys_secret(objs: list[Obj], doc: dict[str, Any]) -> None:
    (secret,) = [o for o in find(objs, "Secret") if o["metadata"]["name"].startswith(
        "tfserving-lb-keys")]
    secret["data"]["keys.yaml"] = base64.b64encode(yaml.safe_dump(doc).encode()).decode()


TLS_MUTATIONS: dict[str, tuple[Callable[[list[Obj]], None], Callable[[list[Obj]], None]]] = {
    "tls subPath": (check_tls, lambda o: _tls_mount(o).update(subPath="tls.crt")),
    "cert elsewhere": (check_tls, lambda o: edit_config(
        o, lambda d: d["listen"]["tls"].update(cert="/etc/other/tls.crt"))),
    "service name": (check_tls, lambda o: _certificate(o)["spec"].update(dnsNames=["x.y"])),
    "key kept": (check_tls, lambda o: _certificate(o)["spec"]["privateKey"].pop(
        "rotationPolicy")),
    "plaintext key": (check_tls, lambda o: _keys_secret(
        o, {"keys": [{"id": "a", "sha256": "the-key-itself"}]})),
    "probe over http": (check_probes, lambda o: container(o, PROXY)["readinessProbe"][
        "httpGet"].update(scheme="HTTP")),
    "probes and mtls": (check_probes, lambda o: edit_config(o, lambda d: d["listen"]["tls"].update(
        client_ca="/etc/tfserving-lb-tls/ca.crt", require_client_cert=True))),
    "probes need a key": (check_probes, lambda o: edit_config(
        o, lambda d: d["auth"].update(open=["status"]))),
    "h2c over tls": (check_ports, lambda o: one(o, "Service", PROXY)["spec"]["ports"][1].update(
        appProtocol="kubernetes.io/h2c")),
}


@pytest.fixture(scope="module")
def tls_overlay() -> list[Obj]:
    return render(KUSTOMIZATIONS[3])


@pytest.mark.parametrize("name", TLS_MUTATIONS)
def test_tls_check_catches(tls_overlay: list[Obj], name: str) -> None:
    check, mutate = TLS_MUTATIONS[name]
    broken = copy.deepcopy(tls_overlay)
    check(broken)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(broken)
