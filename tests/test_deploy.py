"""docker-compose.yml cannot run here (no Docker engine): check what it names exists and fits together."""

import re
from pathlib import Path

import yaml
from typer.main import get_command

from app.cli import app
from app.config import Settings
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def vramq_commands() -> set[str]:
    group = get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_services_for_a_gpu_node() -> None:
    assert {"postgres", "redis", "api", "scheduler", "worker"} <= set(SERVICES)


def test_every_vramq_command_it_runs_exists() -> None:
    commands = vramq_commands()
    for name, service in SERVICES.items():
        command = service.get("command", [])
        if command and command[0] == "vramq":
            assert command[1] in commands, f"{name} runs unknown 'vramq {command[1]}'"
        check = service.get("healthcheck", {}).get("test", [])
        if check[1:2] == ["vramq"]:
            assert check[2] in commands, f"{name}'s health check runs unknown 'vramq {check[2]}'"


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_the_worker_reserves_the_gpus_and_services_share_state() -> None:
    [device] = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert SERVICES["worker"]["environment"]["VRAMQ_DATABASE_URL"].startswith("postgresql")
    assert (
        "vramq-home:/var/lib/vramq" in SERVICES["worker"]["volumes"]
        and "vramq-home:/var/lib/vramq" in SERVICES["api"]["volumes"]
    )


def test_persistence_for_postgres_and_redis() -> None:
    assert any("/var/lib/postgresql/data" in v for v in SERVICES["postgres"]["volumes"])
    assert "--appendonly" in SERVICES["redis"]["command"]


def test_the_image_copies_what_the_services_need() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for path in ("app", "worker", "migrations", "pyproject.toml"):
        assert f"COPY {path}" in dockerfile or f" {path} " in dockerfile
        assert Path(REPO / path).exists()


def test_every_setting_is_in_the_readmes_configuration_table() -> None:
    table = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(VRAMQ_[A-Z_]+)`", table))

    assert {f"VRAMQ_{name.upper()}" for name in Settings.model_fields} <= documented
