"""Structural checks of the deployment files: docker-compose.yml, deploy/k8s, deploy/prometheus.

They keep the deployment in step with the code: every service of the Procfile is deployed, every MAILING_*
variable the files set is a real setting of the service that gets it, every metric an alert uses exists.
The real tools (docker compose, kubectl + kubernetes-validate, promtool, check-jsonschema) run in
`make check-deploy`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

pytestmark = pytest.mark.unit

yaml: Any = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus"

# The settings class each entrypoint module reads; a module whose settings file does not exist yet is skipped.
SETTINGS = {
    "shared.migrate": ("shared.settings", "CommonSettings"),
    "services.api": ("services.api.settings", "ApiSettings"),
    "services.scheduler": ("services.scheduler.settings", "SchedulerSettings"),
    "services.sender": ("services.sender.settings", "SenderSettings"),
    "services.probe_stub": ("services.probe_stub.settings", "ProbeStubSettings"),
    "services.reporter": ("services.reporter.settings", "ReporterSettings"),
}
# Metric names as Prometheus shows them may carry these suffixes added by the client library.
METRIC_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def procfile_modules() -> dict[str, str]:
    modules = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, command = line.split(":", 1)
        match = re.search(r"-m\s+(\S+)", command)
        assert match, f"Procfile entry {name!r} does not run a module: {command!r}"
        if not match.group(1).startswith("services."):
            # A local stand-in of outside infrastructure (the SMTP sink of `make run`): compose runs
            # mailpit instead, a cluster its own mail relay.
            continue
        modules[name.strip()] = match.group(1)
    return modules


def module_of(command: Any) -> str | None:
    if isinstance(command, str):
        command = command.split()
    if not command:
        return None
    parts = [str(part) for part in command]
    if "-m" in parts and parts.index("-m") + 1 < len(parts):
        return parts[parts.index("-m") + 1]
    return None


def settings_class(module: str) -> Any | None:
    if module not in SETTINGS:
        return None
    module_name, class_name = SETTINGS[module]
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except ModuleNotFoundError:
        return None


def env_names(cls: Any) -> set[str]:
    """The environment variables a pydantic-settings class reads (case-insensitive, so upper-cased)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def known_env_names() -> tuple[set[str], list[str]]:
    names: set[str] = set()
    missing = []
    for module in SETTINGS:
        cls = settings_class(module)
        if cls is None:
            missing.append(module)
        else:
            names |= env_names(cls)
    return names, missing


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def compose_services_by_module() -> dict[str, tuple[str, dict[str, Any]]]:
    found = {}
    for name, service in compose()["services"].items():
        module = module_of(service.get("command"))
        if module:
            found[module] = (name, service)
    return found


def k8s_documents() -> list[dict[str, Any]]:
    """The product's own manifests as written: the base and the probe-stub component (the overlays'
    rendering is checked with kubectl in test_deploy_manifests.py)."""
    docs: list[dict[str, Any]] = []
    for folder in (K8S / "base", K8S / "components" / "probe-stub"):
        for resource in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]:
            docs += load_yaml_documents(folder / resource)
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc.get("kind") == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def deployments_by_module() -> dict[str, dict[str, Any]]:
    found = {}
    for deployment in k8s_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            module = module_of(container.get("command", []) + container.get("args", []))
            if module:
                found[module] = deployment
    return found


# --- every service is deployed ---


def test_every_procfile_service_has_a_compose_service() -> None:
    services = compose_services_by_module()
    missing = {name: module for name, module in procfile_modules().items() if module not in services}
    assert not missing, f"Procfile services without a docker-compose service: {missing}"
    assert "shared.migrate" in services, "docker-compose.yml needs the one-shot migrate service"


def test_compose_publishes_every_port_on_the_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (
                f"compose service {name} publishes {port} on all interfaces"
            )


def test_compose_runs_the_probe_stand_in_only_in_the_dev_profile_and_the_api_in_production() -> None:
    services = compose()["services"]
    assert services["probe_stub"]["profiles"] == ["dev"]
    assert services["sender"]["depends_on"]["probe_stub"]["required"] is False
    assert services["api"]["environment"]["MAILING_ENVIRONMENT"] == "${MAILING_ENVIRONMENT:-production}"
    assert all("profiles" not in s for n, s in services.items() if n != "probe_stub")


def test_every_procfile_service_has_a_k8s_deployment() -> None:
    deployments = deployments_by_module()
    missing = {name: module for name, module in procfile_modules().items() if module not in deployments}
    assert not missing, f"Procfile services without a Deployment in deploy/k8s: {missing}"
    jobs = [
        job
        for job in k8s_kind("Job")
        if any(
            module_of(c.get("command")) == "shared.migrate"
            for c in job["spec"]["template"]["spec"]["containers"]
        )
    ]
    assert jobs, "deploy/k8s needs the migration Job (python -m shared.migrate)"


def test_compose_takes_no_address_of_make_run_from_the_env_file() -> None:
    # Compose reads .env for the compose file's ${...} as well: a MAILING_ name whose .env.example value is
    # a loopback address (make run's) would point a container at itself.
    loopback = set(
        re.findall(
            r"^(MAILING_[A-Z0-9_]+)=\S*127\.0\.0\.1", (ROOT / ".env.example").read_text(), re.MULTILINE
        )
    )
    assert {"MAILING_PROBE_BASE_URL", "MAILING_REPORTER_SMTP_HOST"} <= loopback
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert not used & loopback, f"docker-compose.yml interpolates make run's addresses: {used & loopback}"


WRITABLE = "/tmp/"  # noqa: S108 - the one writable directory of the image, not a file made here


def test_a_development_api_generates_its_secrets_into_the_writable_tmp() -> None:
    # The image's /app belongs to root and the pods' root filesystem is read-only.
    assert compose()["services"]["api"]["environment"]["MAILING_LOCAL_STATE_DIR"].startswith(WRITABLE)
    dev = yaml.safe_load((ROOT / "deploy/k8s/overlays/dev/kustomization.yaml").read_text())
    config = next(p["patch"] for p in dev["patches"] if "name: mailing-config" in p["patch"])
    assert yaml.safe_load(config)["data"]["MAILING_LOCAL_STATE_DIR"].startswith(WRITABLE)


def test_compose_app_services_wait_for_migration_and_have_healthchecks() -> None:
    for module, (name, service) in compose_services_by_module().items():
        if module in ("shared.migrate", "services.probe_stub"):
            continue
        depends = service.get("depends_on", {})
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully", name
        assert "healthcheck" in service, f"compose service {name} has no healthcheck"


# --- every MAILING_* variable is a real setting ---


def test_compose_environment_names_are_settings_of_their_service() -> None:
    for module, (name, service) in compose_services_by_module().items():
        cls = settings_class(module)
        if cls is None:
            continue
        environment = service.get("environment", {})
        keys = (
            environment.keys() if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        )
        unknown = sorted(k for k in keys if k.startswith("MAILING_") and k.upper() not in env_names(cls))
        assert not unknown, f"compose service {name} sets variables {module} does not read: {unknown}"


def test_k8s_container_env_names_are_settings_of_their_service() -> None:
    for where, spec in pod_specs():
        for container in spec["containers"]:
            module = module_of(container.get("command", []) + container.get("args", []))
            cls = settings_class(module) if module else None
            if cls is None:
                continue
            names = [e["name"] for e in container.get("env", [])]
            unknown = sorted(n for n in names if n.startswith("MAILING_") and n not in env_names(cls))
            assert not unknown, f"{where} container {container['name']} sets unknown variables: {unknown}"


def test_k8s_configmap_and_secret_keys_are_settings() -> None:
    known, missing = known_env_names()
    keys: set[str] = set()
    for doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            keys |= {k for k in doc.get("data", {}) if k.startswith("MAILING_")}
        elif doc["kind"] == "Secret":
            keys |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
    unknown = sorted(k for k in keys if k not in known)
    if unknown and missing:
        pytest.skip(f"settings not written yet ({missing}); cannot judge {unknown}")
    assert not unknown, f"ConfigMap/Secret keys that no settings class reads: {unknown}"


def test_env_example_names_are_settings() -> None:
    known, missing = known_env_names()
    names = re.findall(r"^(MAILING_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    unknown = sorted(n for n in names if n not in known)
    if unknown and missing:
        pytest.skip(f"settings not written yet ({missing}); cannot judge {unknown}")
    assert not unknown, f".env.example names that no settings class reads: {unknown}"


# --- pods are run the way operations expects ---


def test_deployments_have_probes_resources_and_run_as_non_root() -> None:
    for deployment in k8s_kind("Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        ports = set()
        for container in spec["containers"]:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            ports |= {str(p["containerPort"]) for p in container.get("ports", [])}
        assert annotations.get("prometheus.io/port") in ports, name


def test_sender_grace_period_outlasts_its_shutdown_timeout() -> None:
    sender = deployments_by_module()["services.sender"]
    grace = sender["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    cls = settings_class("services.sender")
    timeout = cls().shutdown_timeout_seconds if cls is not None else 20.0
    for container in sender["spec"]["template"]["spec"]["containers"]:
        for env in container.get("env", []):
            if env["name"] == "MAILING_SHUTDOWN_TIMEOUT_SECONDS":
                timeout = float(env["value"])
    assert grace > timeout + 5


def test_prometheus_scrapes_every_procfile_service_on_its_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]
    }
    deployments = deployments_by_module()
    for module in procfile_modules().values():
        ports = {
            p["containerPort"]
            for c in deployments[module]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert any(int(t.rsplit(":", 1)[1]) in ports for t in targets), f"no scrape target for {module}"


# --- alerts use metrics that exist ---


def base_metric(name: str) -> str:
    for suffix in METRIC_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def documented_metrics() -> set[str]:
    sources = list(ROOT.glob("services/*/metrics.py")) + list(ROOT.glob("shared/**/metrics.py"))
    sources += [p for p in [ROOT / "docs" / "metrics.md"] if p.exists()]
    names = set()
    for path in sources:
        names |= {base_metric(n) for n in re.findall(r"\bmailing_[a-z0-9_]+", path.read_text())}
    return names


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [
        (rule["alert"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_alerts_only_use_metrics_that_exist() -> None:
    known = documented_metrics()
    assert known, "no metric definitions found"
    for alert, expr in alert_exprs():
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        used = set(re.findall(r"\bmailing_[a-z0-9_]+", without_strings))
        unknown = sorted(name for name in used if base_metric(name) not in known)
        assert not unknown, f"alert {alert} uses metrics no service exports: {unknown}"


def test_alerts_cover_the_operational_signals() -> None:
    exprs = " ".join(expr for _, expr in alert_exprs())
    for needle in (
        "up{",
        "mailing_api_requests_total",
        "mailing_api_request_duration_seconds_bucket",
        "mailing_api_outbox_backlog",
        "mailing_scheduler_due_backlog",
        "mailing_sender_attempts_total",
        "mailing_sender_circuit_state",
        "parking",
    ):
        assert needle in exprs, f"no alert uses {needle}"
    for needle in (
        "mailing_sender_fenced",
        "mailing_sender_outcomes_unwritten",
        "mailing_reporter_leases_lost",
    ):
        assert needle in exprs, f"no alert uses {needle}"


# --- every alert has its runbook and its tests ---

RUNBOOKS = ROOT / "docs" / "runbooks.md"
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def heading_anchor(heading: str) -> str:
    """The anchor GitHub and GitLab give a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> dict[str, str]:
    return {
        heading_anchor(m.group(2)): m.group(2)
        for m in re.finditer(r"^(#{1,6})\s+(.+?)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    }


def seconds(duration: str) -> float:
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * DURATION_UNITS[u] for n, u in parts)


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"|`[^`]*`', '""', expr)
    return set(re.findall(r"\b(?:mailing_[a-z0-9_]+|up)\b(?=\s*[{\[)\s]|$)", without_strings))


def test_every_alert_has_a_summary_a_description_and_its_own_runbook_section() -> None:
    anchors = runbook_anchors()
    seen = set()
    for rule in alert_rules():
        alert, annotations = rule["alert"], rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"alert {alert} has no {key}"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", f"{alert}: runbook_url {annotations['runbook_url']!r}"
        assert anchor == alert.lower(), f"{alert}: its runbook_url points at #{anchor}"
        assert anchor in anchors, f"{alert}: docs/runbooks.md has no heading for #{anchor}"
        assert anchor not in seen, f"two alerts share the runbook section #{anchor}"
        seen.add(anchor)
    sections = {a for a, heading in anchors.items() if heading.startswith("Mailing")}
    assert sections == seen, f"runbook sections without an alert: {sorted(sections - seen)}"


def test_every_runbook_section_says_what_it_means_how_to_confirm_and_what_to_do() -> None:
    text = RUNBOOKS.read_text()
    for rule in alert_rules():
        start = text.index(f"## {rule['alert']}\n")
        end = text.find("\n## ", start + 1)
        section = text[start : end if end != -1 else len(text)]
        for part in ("**Means.**", "**Confirm.**", "**Do.**"):
            assert part in section, f"runbook of {rule['alert']} has no {part}"


def test_every_alert_has_a_case_that_fires_it_and_a_near_miss_that_must_not() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    firing: dict[str, list[dict[str, Any]]] = {}
    quiet: dict[str, list[tuple[float, set[str]]]] = {}
    for group in tests["tests"]:
        series = {re.split(r"[{\s]", s["series"].strip(), maxsplit=1)[0] for s in group["input_series"]}
        for case in group.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                firing.setdefault(case["alertname"], []).extend(case["exp_alerts"])
            else:
                quiet.setdefault(case["alertname"], []).append((seconds(case["eval_time"]), series))
    for rule in alert_rules():
        alert = rule["alert"]
        assert alert in firing, f"alerts_test.yml has no case where {alert} fires"
        for expected in firing[alert]:
            annotations = expected.get("exp_annotations", {})
            assert set(annotations) == set(rule["annotations"]), (
                f"a firing case of {alert} does not check every annotation: {sorted(annotations)}"
            )
        # A near miss: evaluated after the alert's `for:` could have passed, on input that has every
        # series the expression reads (an empty input would miss nothing).
        needed = metric_names(rule["expr"])
        near = [
            t
            for t, series in quiet.get(alert, [])
            if t >= seconds(rule.get("for", "0s")) and needed <= series
        ]
        assert near, (
            f"alerts_test.yml has no near miss for {alert}: a case with exp_alerts: [] evaluated after"
            f" {rule.get('for', '0s')} whose input has {sorted(needed)}"
        )


# --- RabbitMQ scraped by its own plugin ---


def test_compose_rabbitmq_serves_its_prometheus_endpoint_and_prometheus_scrapes_it() -> None:
    rabbitmq = compose()["services"]["rabbitmq"]
    plugins = next(m for m in rabbitmq["volumes"] if m.endswith(":/etc/rabbitmq/enabled_plugins:ro"))
    enabled = (ROOT / plugins.split(":")[0]).read_text()
    assert re.fullmatch(r"\[[a-z_,]+\]\.\n", enabled), f"not an Erlang list of plugins: {enabled!r}"
    assert {"rabbitmq_prometheus", "rabbitmq_management"} <= set(enabled.strip("[].\n").split(","))
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, path in (("mailing-rabbitmq", "/metrics"), ("mailing-rabbitmq-queues", "/metrics/detailed")):
        assert jobs[name]["metrics_path"] == path
        assert jobs[name]["static_configs"][0]["targets"] == ["rabbitmq:15692"]
    assert "queue_coarse_metrics" in jobs["mailing-rabbitmq-queues"]["params"]["family"]


def test_cluster_scrapes_rabbitmq_with_the_same_jobs_as_compose() -> None:
    monitors = load_yaml_documents(K8S / "components" / "monitoring" / "monitors.yaml")
    (service_monitor,) = [d for d in monitors if d["kind"] == "ServiceMonitor"]
    cluster_jobs = {
        r["replacement"]: e for e in service_monitor["spec"]["endpoints"] for r in e["relabelings"]
    }
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    compose_jobs = {j["job_name"]: j for j in config["scrape_configs"] if "rabbitmq" in j["job_name"]}
    assert set(cluster_jobs) == set(compose_jobs)
    for job, endpoint in cluster_jobs.items():
        assert endpoint["port"] == "prometheus" and endpoint["path"] == compose_jobs[job]["metrics_path"]
        assert endpoint.get("params", {}) == compose_jobs[job].get("params", {})


# --- the dashboard and what feeds it ---

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mailing.json"


def dashboard_panels() -> list[dict[str, Any]]:
    import json

    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]


def test_dashboard_only_uses_metrics_that_exist() -> None:
    known = documented_metrics()
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        without_strings = re.sub(r'"[^"]*"|`[^`]*`', '""', expr)
        unknown = sorted(
            n for n in re.findall(r"\bmailing_[a-z0-9_]+", without_strings) if base_metric(n) not in known
        )
        assert not unknown, f"dashboard expression {expr!r} uses metrics no service exports: {unknown}"
        # RabbitMQ's own metrics: docs/metrics.md lists the ones the dashboard reads.
        for name in re.findall(r"\brabbitmq_[a-z0-9_]+", without_strings):
            assert f"`{name}`" in metrics_doc, f"dashboard uses {name}, which docs/metrics.md does not list"


def test_dashboard_shows_what_operations_watches() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "mailing_sender_outcomes_total",  # delivery rate by outcome
        "histogram_quantile(0.5, sum by (le) (rate(mailing_sender_provider_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(mailing_sender_provider_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(mailing_sender_provider_latency_seconds_bucket",
        "mailing_scheduler_due_backlog_messages",
        'rabbitmq_detailed_queue_messages_ready{queue="$namespace.send"}',  # send queue, from the broker
        "rabbitmq_detailed_queue_messages{queue=~`$namespace\\.send\\.retry\\..+`}",  # retry tiers
        'rabbitmq_detailed_queue_messages{queue="$namespace.parking"}',  # parked
        "mailing_sender_circuit_state",
        "mailing_api_outbox_backlog",
        "mailing_reporter_last_sent_day_timestamp_seconds",  # the daily report's state
        "mailing_reporter_next_report_due_timestamp_seconds",  # what MailingReporterReportOverdue reads
        "mailing_reporter_report_failures_total",
    ):
        assert needle in exprs, f"the dashboard has no panel with {needle}"
    titles = [p["title"] for p in dashboard_panels()]
    assert len(titles) == len(set(titles)), "two panels share a title"


def test_dashboard_picks_its_data_source_and_namespace_through_variables() -> None:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["namespace"]["current"]["value"] == "mailing"  # MAILING_AMQP_NAMESPACE's default
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        for where in [panel, *panel["targets"]]:
            assert where["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_compose_grafana_provisions_the_prometheus_data_source_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"] if m.startswith("./")}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_in = mounts["./deploy/grafana/dashboards"]
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host in services and any(p.endswith(f":{port}") for p in services[host]["ports"])
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "mailing.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_in
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_in}/{DASHBOARD.name}"
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])


def test_every_gitlab_ci_script_line_is_a_command() -> None:
    # An unquoted `grep -q "image: x"` reads as a mapping, which the schema lets through and GitLab rejects.
    pipeline = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    for name, job in pipeline.items():
        if isinstance(job, dict):
            for part in ("before_script", "script", "after_script"):
                for line in job.get(part) or []:
                    assert isinstance(line, str), f"{name}.{part} holds {line!r}, not a command"
