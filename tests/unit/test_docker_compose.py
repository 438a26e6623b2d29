"""No Docker engine runs here, so docker/ is checked as text: the compose file and Dockerfiles must
name real dfscan commands, options and settings, real files, distinct GPUs, and no secrets."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dfscan.settings import CURRENT
from tests.fixtures.cli import resolve

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_TEXT = (DOCKER / "compose.yaml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILES = {name: (DOCKER / name).read_text() for name in ("Dockerfile.cpu", "Dockerfile.cuda")}
ENV_EXAMPLE = (DOCKER / ".env.example").read_text()
SECRETS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "DFSCAN_FLOWER_PASSWORD",
    "DFSCAN_WEBHOOK_SECRET",
    "GRAFANA_ADMIN_PASSWORD",
)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def dfscan_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in SERVICES.items() if str(svc.get("image", "")).startswith("dfscan:")}


def command_of(name: str) -> list[str]:
    command = SERVICES[name]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def workers(queue: str) -> dict[str, list[str]]:
    out = {}
    for name in dfscan_services():
        args = command_of(name)
        if args[1:2] == ["worker"] and args[args.index("--queues") + 1] == queue:
            out[name] = args
    return out


def environment(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment") or {}
    assert isinstance(env, dict), f"{name}: use the mapping form of environment"
    return {key: str(value) for key, value in env.items()}


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", DOCKER / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- commands and settings ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(dfscan_services()))
def test_every_dfscan_service_runs_a_real_subcommand_with_real_options(name: str) -> None:
    args = command_of(name)
    assert args[0] == "dfscan", f"{name}: {args}"
    command, rest = resolve(args[1:])
    assert not hasattr(command, "commands"), f"{name}: `{' '.join(args)}` names a group, not a command"
    # Click parses the options exactly as `dfscan` would; an unknown option or bad value raises.
    command.make_context(" ".join(args[:2]), rest)


def test_the_resolver_rejects_commands_and_options_that_do_not_exist() -> None:
    with pytest.raises(AssertionError, match="not a dfscan command"):
        resolve(["serve"])
    command, rest = resolve(["worker", "--queue", "inference"])
    with pytest.raises(Exception, match="No such option: --queue") as caught:
        command.make_context("dfscan worker", rest)
    assert type(caught.value).__name__ == "NoSuchOption"


def test_every_dfscan_variable_is_a_setting() -> None:
    names = set(
        re.findall(r"\bDFSCAN_[A-Z0-9_]+", COMPOSE_TEXT + ENV_EXAMPLE + "".join(DOCKERFILES.values()))
    )
    assert {"DFSCAN_DATABASE_URL", "DFSCAN_BROKER_URL", "DFSCAN_FLOWER_PASSWORD"} <= names
    unknown = sorted(name for name in names if name.removeprefix("DFSCAN_").lower() not in CURRENT)
    assert not unknown, f"not settings (retired, or not fields of dfscan.settings.Settings): {unknown}"


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE, flags=re.M))
    used = {match.group(1) for match in REFERENCE.finditer(COMPOSE_TEXT)}
    assert used - documented == set(), f"add to docker/.env.example: {sorted(used - documented)}"


# --- secrets ----------------------------------------------------------------------------------------


def test_secrets_are_required_from_the_environment_and_never_defaulted() -> None:
    for match in REFERENCE.finditer(COMPOSE_TEXT):
        if match.group(1) in SECRETS:
            assert match.group(2) == ":?", f"{match.group(0)}: a secret must be required, with a message"
    for secret in SECRETS:
        assert f"${{{secret}:?" in COMPOSE_TEXT, f"{secret} is not taken from the environment"
        assert re.search(rf"^{secret}=$", ENV_EXAMPLE, flags=re.M), f".env.example must leave {secret} empty"


def test_no_plaintext_credentials_in_any_service() -> None:
    for name, svc in SERVICES.items():
        env = environment(name) if svc.get("environment") else {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key):
                assert REFERENCE.fullmatch(value), f"{name}.{key} is not an environment reference"
            for userinfo in re.findall(r"://([^/@\s]*)@", value):
                password = userinfo.partition(":")[2]
                assert REFERENCE.fullmatch(password), f"{name}.{key} has a plaintext password in its URL"
        for part in command_of(name) if "command" in svc else []:
            assert "password" not in part.lower() or REFERENCE.search(part), f"{name}: {part}"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


# --- infrastructure -----------------------------------------------------------------------------------


def named_volume(name: str, target: str) -> str:
    for mount in SERVICES[name].get("volumes", []):
        source, _, rest = str(mount).partition(":")
        if rest.split(":")[0] == target:
            assert source in (COMPOSE.get("volumes") or {}), f"{name}: {source} is not a declared volume"
            return source
    raise AssertionError(f"{name} mounts nothing at {target}")


def test_redis_persists_with_append_only_file_on_a_volume() -> None:
    args = command_of("redis")
    assert args[args.index("--appendonly") + 1] == "yes"
    named_volume("redis", "/data")
    assert "redis-cli" in SERVICES["redis"]["healthcheck"]["test"]


def test_postgres_has_a_volume_and_a_readiness_healthcheck() -> None:
    named_volume("postgres", "/var/lib/postgresql/data")
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"]


def test_migrate_runs_once_after_postgres_is_healthy() -> None:
    assert command_of("migrate") == ["dfscan", "db", "upgrade"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no"


def test_workers_and_sweeper_start_only_after_migration_and_healthy_backends() -> None:
    gated = [name for name in dfscan_services() if command_of(name)[1] in ("worker", "sweeper")]
    assert "sweeper" in gated and len(gated) >= 4
    for name in gated:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_inference_gpu_workers_reserve_distinct_gpus() -> None:
    gpu_ids: dict[str, str] = {}
    for name in workers("inference"):
        devices = SERVICES[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if not devices:
            assert environment(name)["DFSCAN_DEVICE"] == "cpu", f"{name} has no GPU and is not a CPU worker"
            continue
        (device,) = devices
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        (gpu,) = device["device_ids"]
        assert gpu not in gpu_ids.values(), f"{name} reserves GPU {gpu}, like {gpu_ids}"
        gpu_ids[name] = gpu
        assert environment(name)["DFSCAN_DEVICE"] == "cuda"
        assert "CUDA_VISIBLE_DEVICES" not in environment(name), "the reservation already renumbers the GPU"
        assert SERVICES[name]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert len(gpu_ids) >= 2


def test_worker_node_names_are_distinct_per_service() -> None:
    names: dict[str, tuple[str, tuple[str, ...]]] = {}
    for service, args in {**workers("inference"), **workers("training")}.items():
        node = args[args.index("--name") + 1]
        assert node.endswith("@%h"), f"{service}: the healthcheck matches workers by host"
        profile = tuple(SERVICES[service].get("profiles", ()))
        assert (node, profile) not in names.values(), service
        names[service] = (node, profile)
    assert workers("training"), "a training worker consumes the training queue"


def test_flower_requires_its_password_and_listens_on_loopback_only() -> None:
    assert command_of("flower")[:2] == ["dfscan", "flower"]
    env = environment("flower")
    assert env["DFSCAN_FLOWER_PASSWORD"].startswith("${DFSCAN_FLOWER_PASSWORD:?")
    assert all(str(port).startswith("127.0.0.1:") for port in SERVICES["flower"]["ports"])
    assert "/healthcheck" in " ".join(SERVICES["flower"]["healthcheck"]["test"])
    # /healthcheck needs the credential too, and the container listens on every interface behind
    # the loopback-only published port.
    assert "Authorization" in " ".join(SERVICES["flower"]["healthcheck"]["test"])
    assert env["DFSCAN_FLOWER_ADDRESS"] == "0.0.0.0"


def test_builds_point_at_existing_dockerfiles_in_the_repository_context() -> None:
    for name, svc in SERVICES.items():
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / svc["build"]["dockerfile"]).is_file(), name


# --- Dockerfiles --------------------------------------------------------------------------------------


def dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfile_copies_files_that_exist_and_are_not_ignored(dockerfile: str) -> None:
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILES[dockerfile], flags=re.M)
    sources = [src for line in copies for src in line.split()[:-1]]
    assert {"pyproject.toml", "setup.py", "alembic", "dfscan", "worker", "producer", "db"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such file in the repository"
        assert not dockerignored(src), f"{dockerfile}: COPY {src} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfile_pins_the_tested_torch_and_runs_as_a_user_with_a_healthcheck(dockerfile: str) -> None:
    text = DOCKERFILES[dockerfile]
    pins = re.findall(r"\btorch==([0-9][0-9a-z.]*)", text)
    tested = importlib.metadata.version("torch").split("+")[0]
    assert pins == [tested], f"{dockerfile}: torch pins {pins}, the tests run torch {tested}"
    # The image installs the wheel built in its first stage (migrations inside), never an editable tree.
    assert re.search(r"^RUN pip wheel --no-deps .* -w /dist \.$", text, flags=re.M)
    assert re.search(r'pip install "\$\{wheel\}\[train,flower,api\]"', text)
    # One install: the face detector's weights are in the wheel, no second (--no-deps) package.
    assert re.findall(r"pip install", text) == ["pip install", "pip install"]  # torch, then the wheel
    assert "facenet" not in text and "pip install --no-deps" not in text
    assert "pip install -e" not in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile}: runs as {users or 'root'}"
    assert re.search(r"^HEALTHCHECK .*\n?.*docker/healthcheck\.py", text, flags=re.M)
    assert "HF_HOME=" in text


# The extra each kind of service needs (pyproject.toml); `train` includes `worker`.
ROLE_EXTRAS = {"inference": {"worker", "train"}, "training": {"train"}, "flower": {"flower"}, "api": {"api"}}


def test_each_image_installs_the_extras_of_every_service_that_runs_it() -> None:
    for name, svc in dfscan_services().items():
        dockerfile = "Dockerfile." + str(svc["image"]).split(":", 1)[1]
        (extras,) = re.findall(r'pip install "\$\{wheel\}\[([a-z,]+)\]"', DOCKERFILES[dockerfile])
        args = command_of(name)
        role = args[args.index("--queues") + 1] if args[1] == "worker" else args[1]
        needs = ROLE_EXTRAS.get(role)
        if needs is not None:
            assert needs & set(extras.split(",")), (
                f"{name} ({role}) runs {dockerfile}, which installs [{extras}]"
            )


def test_cpu_image_takes_torch_from_the_cpu_index_and_cuda_image_from_a_cuda_base() -> None:
    assert "--index-url https://download.pytorch.org/whl/cpu" in DOCKERFILES["Dockerfile.cpu"]
    assert re.search(r"^FROM python:3\.11-slim$", DOCKERFILES["Dockerfile.cpu"], flags=re.M)
    assert re.search(r"^FROM nvidia/cuda:\S+-ubuntu", DOCKERFILES["Dockerfile.cuda"], flags=re.M)
    assert "whl/cpu" not in DOCKERFILES["Dockerfile.cuda"]


def test_cuda_image_takes_the_torch_build_of_its_base_images_cuda() -> None:
    text = DOCKERFILES["Dockerfile.cuda"]
    (base,) = re.findall(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-\S+", text, flags=re.M)
    (index,) = re.findall(
        r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu(\d+)$", text, flags=re.M
    )
    assert index == base[0] + base[1], f"torch cu{index} on a CUDA {'.'.join(base)} base image"
    assert re.search(r'^RUN pip install torch==\S+ --index-url "\$TORCH_INDEX_URL"$', text, flags=re.M)


def test_healthcheck_matches_worker_nodes_on_this_host_only() -> None:
    on_this_host = load_healthcheck().on_this_host
    assert on_this_host("gpu0@box1", "box1")
    assert on_this_host("dfscan-inference@box1-4242", "box1")
    assert not on_this_host("gpu0@box12", "box1")
    assert not on_this_host("gpu0@other", "box1")
    assert not on_this_host("box1", "box1")


def test_both_images_run_with_the_workers_allocator_defaults() -> None:
    from dfscan.cli.service import ALLOCATOR_DEFAULTS

    for name, text in DOCKERFILES.items():
        for variable, value in ALLOCATOR_DEFAULTS.items():
            assert re.search(rf"^\s*(ENV\s+)?{variable}={value}\b", text, flags=re.M), f"{name}: {variable}"


def test_the_gpu_worker_manifest_probes_readiness_and_liveness_on_the_metrics_port() -> None:
    (deployment,) = yaml.safe_load_all((ROOT / "docker/k8s/worker-gpu.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["DFSCAN_METRICS_PORT"] == str(ports["metrics"])
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert float(container["resources"]["requests"]["cpu"]) >= 4
