"""Monitoring and autoscaling deploy files, checked as text (no Docker or Kubernetes here): the
compose services, Prometheus' scrape targets, Grafana's provisioned dashboard, the k8s manifests and
the KEDA ScaledObject. Every query must name metrics that dfscan really serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import worker.metrics  # noqa: F401  (registers the worker's metrics in the default registry)
from dfscan.exporter import METRICS as EXPORTER_METRICS
from dfscan.settings import CURRENT, Settings
from tests.unit.test_docker_compose import COMPOSE, SERVICES, command_of, environment, resolve

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = {path.name: list(yaml.safe_load_all(path.read_text())) for path in (DOCKER / "k8s").glob("*.yaml")}
DASHBOARD = json.loads((DOCKER / "grafana" / "dashboards" / "dfscan.json").read_text())
PROMETHEUS = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
# PromQL words that look like metric names but are functions, keywords or label names.
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "max", "le", "stage", "without", "on"}


def served_metric_names() -> set[str]:
    """Every sample name a worker or the exporter can expose."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
        "gauge": ("",),
    }
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names | set(EXPORTER_METRICS)


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {word for word in words if word not in PROMQL_WORDS and not word.isdigit()}


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_the_dashboard_queries_name_only_metrics_dfscan_serves() -> None:
    served = served_metric_names()
    assert {"dfscan_jobs_total", "dfscan_stage_seconds_bucket", "process_resident_memory_bytes"} <= served
    for expr in dashboard_exprs():
        unknown = metric_names(expr) - served
        assert not unknown, f"{expr!r} names {unknown}, which no dfscan process serves"
    assert metric_names("sum by (le, stage) (rate(dfscan_nope_bucket[5m]))") == {"dfscan_nope_bucket"}


def test_the_dashboard_shows_throughput_batch_size_stage_quantiles_queue_and_errors() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "rate(dfscan_jobs_total[1m])",
        "dfscan_model_inputs_total",
        "dfscan_model_batches_total",
        "histogram_quantile(0.5, sum by (le, stage) (rate(dfscan_stage_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, stage) (rate(dfscan_stage_seconds_bucket",
        "dfscan_queue_jobs",
        "dfscan_queue_oldest_job_age_seconds",
        'sum by (error_code) (rate(dfscan_jobs_total{outcome="failed"}',
    ):
        assert needle in exprs, needle
    assert len({panel["id"] for panel in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    uids = {t["datasource"]["uid"] for p in DASHBOARD["panels"] for t in p["targets"]}
    datasources = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert uids == {ds["uid"] for ds in datasources["datasources"]}


def test_grafana_is_provisioned_with_the_dashboard_and_a_required_password() -> None:
    mounts = {str(m).split(":")[1]: str(m).split(":")[0] for m in SERVICES["grafana"]["volumes"]}
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/dfscan.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (DOCKER / mounts[path] / "dfscan.json").is_file()
    assert (DOCKER / mounts["/etc/grafana/provisioning"] / "datasources").is_dir()
    assert environment("grafana")["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    for name in ("grafana", "prometheus"):
        assert all(str(port).startswith("127.0.0.1:") for port in SERVICES[name]["ports"]), name


def test_prometheus_scrapes_every_inference_worker_and_the_exporter_on_their_ports() -> None:
    mount = next(str(m) for m in SERVICES["prometheus"]["volumes"] if "prometheus.yml" in str(m))
    assert (DOCKER / mount.split(":")[0]).resolve() == (DOCKER / "prometheus" / "prometheus.yml").resolve()
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    (sd,) = jobs["dfscan-workers"]["dns_sd_configs"]
    inference = [
        name
        for name in SERVICES
        if "command" in SERVICES[name] and command_of(name)[1:4] == ["worker", "--queues", "inference"]
    ]
    assert set(sd["names"]) == set(inference)
    for name in inference:
        assert str(sd["port"]) == environment(name)["DFSCAN_METRICS_PORT"]
        assert environment(name)["DFSCAN_METRICS_ADDR"] == "0.0.0.0"
    (static,) = jobs["dfscan-exporter"]["static_configs"]
    port = command_of("exporter")[command_of("exporter").index("--port") + 1]
    assert static["targets"] == [f"exporter:{port}"]


def test_the_sweeper_delivers_webhooks_with_a_required_secret() -> None:
    env = environment("sweeper")
    assert env["DFSCAN_WEBHOOK_SECRET"].startswith("${DFSCAN_WEBHOOK_SECRET:?")
    assert "exporter" in COMPOSE["services"] and command_of("exporter")[:2] == ["dfscan", "exporter"]


# --- Kubernetes ---------------------------------------------------------------------------------------


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for docs in K8S.values() for doc in docs if doc and doc["kind"] == kind]


def test_k8s_containers_run_real_commands_and_settings() -> None:
    for deployment in k8s("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            args = container["command"]
            assert args[0] == "dfscan"
            command, rest = resolve(args[1:])
            command.make_context(" ".join(args[:2]), rest)
            for item in container.get("env", []):
                if item["name"].startswith("DFSCAN_"):
                    assert item["name"].removeprefix("DFSCAN_").lower() in CURRENT, item  # not a retired one
            assert (
                deployment["spec"]["selector"]["matchLabels"].items()
                <= deployment["spec"]["template"]["metadata"]["labels"].items()
            )


def test_gpu_workers_take_one_gpu_each_and_outlast_their_drain() -> None:
    (worker,) = [d for d in k8s("Deployment") if d["metadata"]["name"] == "dfscan-worker-gpu"]
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["DFSCAN_DEVICE"] == "cuda" and env["DFSCAN_METRICS_PORT"] == "9464"
    # The drain after SIGTERM: the tasks held (fetch deadline + a batch), then the model batcher (60 s)
    # and the three database batchers (30 s each) of WorkerRuntime.close.
    drain = Settings(_env_file=None).fetch_deadline + 60 + 3 * 30  # type: ignore[call-arg]
    assert spec["terminationGracePeriodSeconds"] > drain


def test_keda_scales_the_gpu_workers_on_the_exporters_signal() -> None:
    (scaled,) = k8s("ScaledObject")
    deployments = {d["metadata"]["name"] for d in k8s("Deployment")}
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dfscan-worker-gpu"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert metric_names(trigger["metadata"]["query"]) == {"dfscan_scaling_jobs_outstanding"}
    # the target per worker: the jobs one worker holds at once (2 x batch size task threads)
    (worker,) = [d for d in k8s("Deployment") if d["metadata"]["name"] == "dfscan-worker-gpu"]
    env = {i["name"]: i["value"] for i in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert int(trigger["metadata"]["threshold"]) == 2 * int(env["DFSCAN_BATCH_SIZE"])
    exporter_service = [s for s in k8s("Service") if s["metadata"]["name"] == "dfscan-exporter"]
    assert exporter_service and exporter_service[0]["spec"]["ports"][0]["port"] == 9465
