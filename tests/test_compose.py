"""docker-compose.yml, its Dockerfile and the proxy config agree (no Docker engine here).

Loads the compose file as YAML (anchors and merge keys resolved) and checks
every service, port, mount and the proxy config against one another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from lb.config import Config, load_config, split_hostport
from lb.edge.keys import load_keys
from tests.procs import ROOT

TF_GRPC, TF_REST = 8500, 8501


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc["services"]  # type: ignore[no-any-return]


def _proxies(services: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in services.items() if "build" in v}


def _mount(volume: str) -> tuple[str, str]:
    source, target, *_ = volume.split(":")
    return source, target


def _config(services: dict[str, Any]) -> Config:
    (source,) = {_mount(v)[0] for s in _proxies(services).values() for v in s["volumes"]}
    return load_config(ROOT / source)


def test_services(compose: dict[str, Any]) -> None:
    tf = {k for k, v in compose.items()
          if str(v.get("image", "")).startswith("tensorflow/serving:")}
    assert tf == {"tf-a", "tf-b", "tf-c"}
    assert len(_proxies(compose)) == 2 and "redis" in compose


def test_redis_is_bounded_and_lru(compose: dict[str, Any]) -> None:
    cmd = compose["redis"]["command"]
    assert cmd[cmd.index("--maxmemory") + 1].endswith(("mb", "gb"))
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_tf_serving_nodes_serve_the_configured_model(compose: dict[str, Any]) -> None:
    cfg = _config(compose)
    for name in ("tf-a", "tf-b", "tf-c"):
        svc = compose[name]
        assert _mount(svc["volumes"][0]) == ("./models", "/models")      # the folder users fill
        assert svc["environment"]["MODEL_NAME"] in cfg.models
        assert "command" not in svc            # the image's own ports: 8500 gRPC, 8501 REST


def test_proxy_config_matches_the_services(compose: dict[str, Any]) -> None:
    cfg = _config(compose)
    assert {n.name for n in cfg.nodes} == {"tf-a", "tf-b", "tf-c"}
    for n in cfg.nodes:
        url = urlsplit(n.rest)
        assert (url.hostname, url.port) == (n.name, TF_REST) and n.name in compose
        assert n.grpc is not None and split_hostport(n.grpc) == (n.name, TF_GRPC)
    assert len({n.weight for n in cfg.nodes}) > 1                       # one weighs more
    assert cfg.cache.backend == "redis" and urlsplit(cfg.cache.redis_url).hostname == "redis"


def test_proxy_replicas_publish_the_configured_ports(compose: dict[str, Any]) -> None:
    cfg = _config(compose)
    assert cfg.listen.grpc is not None
    inside = {split_hostport(a)[1] for a in (cfg.listen.rest, cfg.listen.grpc, cfg.listen.admin)}
    published: list[str] = []
    for svc in _proxies(compose).values():
        ports = [p.rsplit(":", 2) for p in svc["ports"]]
        assert {int(p[-1]) for p in ports} == inside
        published += [":".join(p[:-1]) for p in ports]
        admin = next(p for p in ports if int(p[-1]) == split_hostport(cfg.listen.admin)[1])
        assert admin[0] == "127.0.0.1"                                 # admin stays local
        assert set(svc["depends_on"]) == {"redis", "tf-a", "tf-b", "tf-c"}
        _, target = _mount(svc["volumes"][0])
        assert target == "/etc/tfserving-lb/lb.yaml"
    assert len(published) == len(set(published))                      # no host port twice


def _dockerfile(services: dict[str, Any]) -> tuple[Path, str]:
    """(build context, the Dockerfile's instructions without comments)."""
    builds = {(s["build"]["context"], s["build"]["dockerfile"])
              for s in _proxies(services).values()}
    ((context, dockerfile),) = builds
    text = (ROOT / context / dockerfile).read_text()
    return ROOT / context, "\n".join(ln for ln in text.splitlines()
                                     if ln.strip() and not ln.lstrip().startswith("#"))


def _stages(code: str) -> list[list[str]]:
    """The instructions of each stage, FROM first."""
    stages: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        if line.startswith("FROM"):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_installs_the_proxy_without_tensorflow(compose: dict[str, Any]) -> None:
    context, code = _dockerfile(compose)
    assert "[tf]" not in code and "tensorflow" not in code.lower()
    assert "/etc/tfserving-lb/lb.yaml" in code
    for line in code.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (context / src).exists(), src
    assert Path(ROOT / "scripts" / "docker" / "lb.yaml").is_file()


def test_the_image_runs_the_data_path_compiled(compose: dict[str, Any]) -> None:
    """A build stage with a C compiler builds the wheel by `pip install .`'s route
    (build_backend/ compiles the data path), required to compile; the image installs
    that wheel, with neither compiler nor mypy, and checks it runs compiled. Both stages
    start from the same image (lb.native loads a build only with the Python that made it)."""
    context, code = _dockerfile(compose)
    build, final = _stages(code)
    assert build[0].split()[1] == final[0].split()[1]          # the same base image
    name = build[0].split()[-1]
    assert build[0].split()[-2].upper() == "AS"
    assert any("gcc" in ln for ln in build if ln.startswith("RUN"))
    copied = {src for ln in build if ln.startswith("COPY") for src in ln.split()[1:-1]}
    assert {"pyproject.toml", "build_backend", "lb", "cache"} <= copied
    run = " ".join(ln for ln in build if ln.startswith("RUN"))
    assert "TFSERVING_LB_BUILD=compiled pip wheel --no-deps --wheel-dir /wheels ." in run
    assert "build_native" not in code                          # no second route
    copies = [ln.split() for ln in final if ln.startswith("COPY")]
    assert copies == [["COPY", f"--from={name}", "/wheels", "/wheels"]]   # no sources
    install = " ".join(ln for ln in final if ln.startswith("RUN"))
    assert "pip install /wheels/*.whl" in install
    assert "tfserving-lb data-path" in install                 # fails unless compiled
    assert not any("mypy" in ln or "gcc" in ln or "-e " in ln for ln in final)
    assert (context / "MANIFEST.in").is_file()


def test_the_tls_variant_mounts_what_its_config_reads(compose: dict[str, Any]) -> None:
    """docker-compose.tls.yml replaces each proxy's config and mounts the pair and the
    keys file where that config reads them (compose merges volumes by target)."""
    override = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"]
    assert set(override) == set(_proxies(compose))
    for name, svc in override.items():
        mounts = {_mount(v)[1]: _mount(v)[0] for v in compose[name]["volumes"]}
        mounts.update({_mount(v)[1]: _mount(v)[0] for v in svc["volumes"]})
        cfg = load_config(ROOT / mounts["/etc/tfserving-lb/lb.yaml"])
        assert cfg.listen.tls is not None and cfg.auth is not None
        assert cfg.auth.keys_file is not None and "health" in cfg.auth.open
        for path in (cfg.listen.tls.cert, cfg.listen.tls.key):
            target = path.rsplit("/", 1)[0]
            assert mounts.get(target) == "./certs", path        # a directory: watched
        source = mounts[cfg.auth.keys_file]
        keys = load_keys(cfg.auth.model_copy(update={"keys_file": str(ROOT / source)}))
        assert keys and all(k.sha256 for k in keys)
        assert cfg.rate_limit.shared == "redis"
        assert urlsplit(cfg.rate_limit.redis_url).hostname == "redis"
