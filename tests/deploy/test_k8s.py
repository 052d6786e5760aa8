"""docker/k8s/: valid Kubernetes objects (kubernetes-validate's bundled schemas, strict), and
wired to the image: port, probes, grace period, non-root user."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from .helpers import DOCKER, INSTALL_HINT, parse_dockerfile, parse_key_values

K8S = DOCKER / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))


def _docs():
    docs = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_schema(path):
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        pytest.skip(f"kubernetes-validate (PyPI) is not installed: {INSTALL_HINT}")
    res = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                          str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_deployment_matches_the_image():
    docs = _docs()
    assert {"Deployment", "Service"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]

    image_env, user = {}, None
    for ins in parse_dockerfile(DOCKER / "Dockerfile"):
        if ins.keyword == "ENV":
            image_env.update(parse_key_values(ins.args))
        if ins.keyword == "USER":
            user = ins.args
    port = int(image_env["GPTSERVE_PORT"])
    assert container["ports"][0]["containerPort"] == port
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPTSERVE_HOST"] == "0.0.0.0" and env["GPTSERVE_PORT"] == str(port)

    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model loading time"

    # 30 s drain after SIGTERM, plus the preStop pause.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre_stop[-1]) if pre_stop[0] == "sleep" else 0
    assert pod["terminationGracePeriodSeconds"] > 30 + pause

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert any(m["mountPath"] == "/models" for m in container["volumeMounts"])

    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] in (port, "http")
    if "HorizontalPodAutoscaler" in docs:
        target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])
    assert re.fullmatch(r"[\w.\-/:]+", container["image"])
