"""docker/compose.yaml (+ compose.gpu.yaml): validated by docker-compose when it is installed,
and checked for the deployment's wiring with a YAML parser always."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from .helpers import DOCKER, INSTALL_HINT, find_tool, parse_dockerfile, parse_key_values

BASE = DOCKER / "compose.yaml"
GPU = DOCKER / "compose.gpu.yaml"
VARIANTS = {"cpu": [BASE], "gpu": [BASE, GPU]}


def _load(path):
    return yaml.safe_load(path.read_text())


def _seconds(duration: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration)):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of docker/ with .env made from .env.example (compose needs the env file), beside
    an empty build context, so nothing is written into the checkout."""
    root = tmp_path_factory.mktemp("compose")
    (root / "docker").mkdir()
    for name in ("compose.yaml", "compose.gpu.yaml", "nginx.conf", "Dockerfile",
                 "Dockerfile.cuda"):
        shutil.copy(DOCKER / name, root / "docker" / name)
    shutil.copy(DOCKER / ".env.example", root / "docker" / ".env")
    return root


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_docker_compose_config(variant, project):
    compose = find_tool("docker-compose")
    if compose is None:
        pytest.skip(f"docker-compose not found (Debian package docker-compose): {INSTALL_HINT}")
    files = [a for f in VARIANTS[variant] for a in ("-f", str(project / "docker" / f.name))]
    res = subprocess.run([compose, *files, "config", "-q"], cwd=project, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, f"docker-compose config ({variant}):\n{res.stderr}{res.stdout}"
    # The resolved configuration: the GPU override really swaps the Dockerfile in.
    res = subprocess.run([compose, *files, "config"], cwd=project, capture_output=True,
                         text=True, timeout=60, check=True)
    resolved = yaml.safe_load(res.stdout)
    gptserve = resolved["services"]["gptserve"]
    expected = "docker/Dockerfile.cuda" if variant == "gpu" else "docker/Dockerfile"
    assert gptserve["build"]["dockerfile"] == expected
    assert gptserve["environment"]["GPTSERVE_API_KEY"] == _env_example()["GPTSERVE_API_KEY"]
    webui_env = resolved["services"]["open-webui"]["environment"]
    assert webui_env["OPENAI_API_KEY"] == _env_example()["GPTSERVE_API_KEY"]


def test_gptserve_service():
    svc = _load(BASE)["services"]["gptserve"]
    assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert svc["env_file"] in (".env", [".env"])
    assert svc["restart"] == "unless-stopped"
    # The server drains for 30 s on SIGTERM; compose must not SIGKILL it before that.
    assert _seconds(svc["stop_grace_period"]) > 30
    assert "ports" not in svc, "replicas are reached through nginx; a fixed port breaks --scale"
    assert any(v.split(":")[1] == "/models" for v in svc["volumes"])
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert _seconds(svc["healthcheck"]["start_period"]) >= 60
    assert svc["environment"]["GPTSERVE_HOST"] == "0.0.0.0"
    # The port nginx and the health check use is the one the image exposes.
    env = {}
    for ins in parse_dockerfile(DOCKER / "Dockerfile"):
        if ins.keyword == "ENV":
            env.update(parse_key_values(ins.args))
    assert str(svc["environment"]["GPTSERVE_PORT"]) == env["GPTSERVE_PORT"] == "8000"
    assert ":8000/health" in " ".join(svc["healthcheck"]["test"])


def test_nginx_service_and_config_agree():
    compose = _load(BASE)
    svc = compose["services"]["nginx"]
    image = svc["image"]
    m = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)(-alpine)?", image)
    assert m, f"pin the nginx image: {image}"
    # `server ... resolve` in an upstream block is open source from nginx 1.27.3 on.
    assert tuple(map(int, m.groups()[:3])) >= (1, 27, 3)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"] == "./nginx.conf"
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    assert svc["depends_on"]["gptserve"]["condition"] == "service_healthy"
    assert _seconds(svc["stop_grace_period"]) > 30

    conf = (DOCKER / "nginx.conf").read_text()
    assert re.search(r"^\s*listen 8000;", conf, re.M)
    assert re.search(r"^\s*server gptserve:8000 resolve\b", conf, re.M)
    assert re.search(r"^\s*resolver 127\.0\.0\.11\b", conf, re.M)
    for directive in ("least_conn;", "proxy_buffering off;", "proxy_cache off;",
                      "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "keepalive 64;", "zone gptserve"):
        assert directive in conf, directive
    read_timeout = re.search(r"proxy_read_timeout (\S+);", conf).group(1)
    assert _seconds(read_timeout) >= 600


def test_open_webui_service():
    compose = _load(BASE)
    svc = compose["services"]["open-webui"]
    assert svc["image"].startswith("ghcr.io/open-webui/open-webui:")
    assert not svc["image"].endswith((":main", ":latest")), "pin the Open WebUI image"
    env = svc["environment"]
    assert env["OPENAI_API_BASE_URL"] in ("http://nginx:8000/v1", "http://gptserve:8000/v1")
    assert "GPTSERVE_API_KEY" in env["OPENAI_API_KEY"]
    assert any(str(p).endswith(":8080") and "3000" in str(p) for p in svc["ports"])
    assert svc["restart"] == "unless-stopped"
    assert any(v.endswith(":/app/backend/data") for v in svc["volumes"])


def test_gpu_override():
    svc = _load(GPU)["services"]["gptserve"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_every_variable_is_in_env_example_or_defaulted():
    example = _env_example()
    for path in (BASE, GPU):
        for name, default in re.findall(r"\$\{(\w+)(:?-[^}]*)?\}", path.read_text()):
            assert name in example or default, f"{path.name}: ${{{name}}} has no default and " \
                                               f"is missing from .env.example"
    assert example.get("COMPOSE_PROJECT_NAME") == "gptserve"
