"""docker-compose.yml and Dockerfile: valid, and naming only commands and settings that exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest

from consumer.cli import cli
from consumer.incoming import KEPT_BODY_BYTES
from consumer.settings import Settings
from tests.compose import (
    COMPOSE_FILE,
    DOCKERFILE,
    EXAMPLE_ENV,
    MissingVariableError,
    interpolate,
    load_compose,
)

SETTING = re.compile(r"TASK_HISTORY_[A-Z0-9_]+")
APP_SERVICES = ("migrate", "schedule", "consumer", "api", "demo")
OPERATING = COMPOSE_FILE.parent / "docs" / "operating.md"
README = COMPOSE_FILE.parent / "README.md"
DOCKERIGNORE = COMPOSE_FILE.parent / ".dockerignore"


def check_command(argv: list[str]) -> None:
    """Parse `task-history ARGV` as the CLI would, without running it; raise if it is wrong."""
    assert argv, "an empty command"
    parent = click.Context(cli, info_name="task-history")
    name, *arguments = argv
    command = cli.get_command(parent, name)
    assert command is not None, f"task-history has no command {name!r}"
    command.make_context(name, list(arguments), parent=parent)


def healthcheck_argv(service: dict[str, Any]) -> list[str] | None:
    """The arguments after `task-history` of a service's health check, if it runs task-history."""
    test = service.get("healthcheck", {}).get("test")
    if not test or test[0] != "CMD" or test[1] != "task-history":
        return None
    return list(test[2:])


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of every `NAME` instruction of the Dockerfile (continuations joined)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(f"{name} ")]


class TestComposeIsValid:
    """The compose file is valid Compose."""

    def test_against_the_compose_specification(self) -> None:
        """check-jsonschema accepts it under the Compose Specification's schema."""
        validator = Path(sys.executable).parent / "check-jsonschema"
        result = subprocess.run(
            [str(validator), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_definitions_are_json(self) -> None:
        """The RabbitMQ definitions are JSON once interpolated, with the regexes intact."""
        definitions = json.loads(load_compose()["configs"]["rabbitmq-definitions"]["content"])
        limited = definitions["permissions"][1]
        assert limited["user"] == "task_history"
        assert re.fullmatch(limited["configure"], "task_build_history.events")
        assert not re.fullmatch(limited["configure"], "other.events")
        assert re.fullmatch(limited["write"], "amq.default")

    def test_the_broker_refuses_messages_no_consumer_should_hold(self) -> None:
        """max_message_size is set, above the 1 MiB a too_large dead letter is made of."""
        conf = load_compose()["configs"]["rabbitmq-conf"]["content"]
        (limit,) = re.findall(r"^max_message_size = (\d+)$", conf, re.MULTILINE)
        assert KEPT_BODY_BYTES < int(limit) <= 16 * KEPT_BODY_BYTES


class TestNothingDrifts:
    """Every command and setting the deployment files name exists."""

    @pytest.mark.parametrize("service", APP_SERVICES)
    def test_service_commands_exist(self, service: str) -> None:
        """A service's command (and its health check's) parses as a task-history command."""
        definition = load_compose()["services"][service]
        check_command(definition["command"])
        if (argv := healthcheck_argv(definition)) is not None:
            check_command(argv)

    def test_dockerfile_health_check_exists(self) -> None:
        """The image's HEALTHCHECK is a task-history command that parses."""
        (healthcheck,) = dockerfile_instructions("HEALTHCHECK")
        exec_form = json.loads(healthcheck.split("CMD", 1)[1])
        assert exec_form[0] == "task-history"
        check_command(exec_form[1:])

    @pytest.mark.parametrize("path", [COMPOSE_FILE, DOCKERFILE], ids=lambda p: p.name)
    def test_settings_exist(self, path: Path) -> None:
        """Every TASK_HISTORY_* name in the file is a setting."""
        names = set(SETTING.findall(path.read_text(encoding="utf-8")))
        assert names, f"{path.name} names no setting"
        known = {f"TASK_HISTORY_{field.upper()}" for field in Settings.model_fields}
        assert names <= known, f"unknown settings: {sorted(names - known)}"

    def test_settings_values_are_accepted(self) -> None:
        """The TASK_HISTORY_* values each app service gets are valid settings."""
        services = load_compose()["services"]
        for name in APP_SERVICES:
            environment = services[name]["environment"]
            fields = {
                key.removeprefix("TASK_HISTORY_").lower(): v for key, v in environment.items()
            }
            Settings(**fields)


class TestComposeShape:
    """The services start in order, keep their data, and connect with least privilege."""

    def test_consumer_waits_for_migrate_and_healthy_servers(self) -> None:
        """The consumer starts after migrate succeeded and both servers are healthy."""
        depends = load_compose()["services"]["consumer"]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["postgres"] == {"condition": "service_healthy"}
        assert depends["rabbitmq"] == {"condition": "service_healthy"}

    def test_long_running_services_have_health_checks(self) -> None:
        """The servers, consumer and api check their health; one-shots turn the image's off."""
        services = load_compose()["services"]
        for name in ("postgres", "rabbitmq", "consumer", "api"):
            assert services[name]["healthcheck"]["test"]
        for name in ("migrate", "schedule", "demo"):
            assert services[name]["healthcheck"] == {"disable": True}

    def test_two_consumers_by_default(self) -> None:
        """The consumer runs as two replicas unless told otherwise."""
        assert load_compose()["services"]["consumer"]["deploy"]["replicas"] == "2"

    def test_named_volumes(self) -> None:
        """Both servers keep their data in named volumes."""
        compose = load_compose()
        for service in ("postgres", "rabbitmq"):
            for mount in compose["services"][service]["volumes"]:
                assert mount.split(":")[0] in compose["volumes"]

    def test_pg_cron_is_preloaded(self) -> None:
        """PostgreSQL preloads pg_cron, with its jobs in the history database."""
        command = load_compose()["services"]["postgres"]["command"]
        assert "shared_preload_libraries=pg_cron" in command
        assert "cron.database_name=task_history" in command

    def test_the_consumer_is_not_the_superuser(self) -> None:
        """The consumer's PostgreSQL user is a login member of task_history_consumer."""
        compose = load_compose(EXAMPLE_ENV | {"HISTORY_DB_USER": "app_login"})
        url = urlsplit(compose["services"]["consumer"]["environment"]["TASK_HISTORY_DATABASE_URL"])
        assert url.username == "app_login"
        roles = compose["configs"]["postgres-roles"]["content"]
        assert '"app_login" LOGIN' in roles
        assert "IN ROLE task_history_consumer" in roles

    def test_the_consumer_is_limited_to_its_vhost(self) -> None:
        """The consumer's RabbitMQ user has no tags and permissions in one vhost only."""
        compose = load_compose()
        url = urlsplit(compose["services"]["consumer"]["environment"]["TASK_HISTORY_AMQP_URL"])
        definitions = json.loads(compose["configs"]["rabbitmq-definitions"]["content"])
        (user,) = [u for u in definitions["users"] if u["name"] == url.username]
        assert user["tags"] == []
        granted = [p for p in definitions["permissions"] if p["user"] == url.username]
        assert [p["vhost"] for p in granted] == [url.path.lstrip("/")]

    def test_credentials_come_from_the_environment(self) -> None:
        """Passwords given in the environment (.env) are used everywhere they belong."""
        compose = load_compose(
            EXAMPLE_ENV | {"HISTORY_DB_PASSWORD": "s3cret", "RABBITMQ_PASSWORD": "hunter2"}
        )
        environment = compose["services"]["consumer"]["environment"]
        assert ":s3cret@" in environment["TASK_HISTORY_DATABASE_URL"]
        assert ":hunter2@" in environment["TASK_HISTORY_AMQP_URL"]
        assert "PASSWORD 's3cret'" in compose["configs"]["postgres-roles"]["content"]
        api = compose["services"]["api"]["environment"]
        assert api["TASK_HISTORY_API_TOKEN"] == EXAMPLE_ENV["API_TOKEN"]

    @pytest.mark.parametrize("name", sorted(EXAMPLE_ENV))
    def test_no_default_password(self, name: str) -> None:
        """Each password and the token must be given: without it the stack does not start."""
        with pytest.raises(MissingVariableError, match=f"{name}: set {name} in .env"):
            load_compose({key: value for key, value in EXAMPLE_ENV.items() if key != name})

    def test_no_default_for_any_secret_in_the_file(self) -> None:
        """No `${...PASSWORD:-default}` or `${...TOKEN:-default}` anywhere in the file."""
        text = COMPOSE_FILE.read_text(encoding="utf-8")
        assert re.findall(r"\$\{[A-Z_]*(?:PASSWORD|TOKEN)[A-Z_]*:?-", text) == []
        assert sorted(
            set(re.findall(r"\$\{([A-Z_]*(?:PASSWORD|TOKEN)[A-Z_]*):\?", text))
        ) == sorted(EXAMPLE_ENV)

    def test_the_readme_says_how_to_make_the_env_file(self) -> None:
        """README.md creates .env with every variable the stack requires."""
        readme = README.read_text(encoding="utf-8")
        (block,) = re.findall(r"```sh\n(cat > \.env <<.*?)```", readme, re.DOTALL)
        assert sorted(re.findall(r"^([A-Z_]+)=", block, re.MULTILINE)) == sorted(EXAMPLE_ENV)

    def test_rabbitmq_keeps_its_node_name(self) -> None:
        """A fixed host name: the node's name, and so its data directory, survive down and up."""
        assert load_compose()["services"]["rabbitmq"]["hostname"] == "rabbitmq"

    def test_one_image_for_every_task_history_service(self) -> None:
        """One service builds the image; the others run that image and never pull it."""
        services = load_compose()["services"]
        builders = [name for name in APP_SERVICES if "build" in services[name]]
        assert builders == ["migrate"]
        assert services["migrate"]["build"]["target"] == "app"
        images = {services[name]["image"] for name in APP_SERVICES}
        assert len(images) == 1
        for name in APP_SERVICES:
            if name != "migrate":
                assert services[name]["pull_policy"] == "never", name
                assert "migrate" in services[name]["depends_on"], name

    def test_the_build_context_leaves_out_secrets_and_clutter(self) -> None:
        """.dockerignore lets in only what the image is built from: no .env, .git or .venv."""
        rules = [
            line.strip()
            for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert rules[0] == "*"  # everything out, then only what the Dockerfile copies
        allowed = {rule.removeprefix("!") for rule in rules[1:] if rule.startswith("!")}
        copied = {
            part.rstrip("/").removeprefix("./")
            for line in dockerfile_instructions("COPY")
            if not line.startswith("--from")
            for part in line.split()[:-1]
        }
        assert copied <= allowed
        assert not {".env", ".git", ".venv", "tests", "docs"} & allowed


class TestDockerfile:
    """The image: slim, non-root, task-history as entry point."""

    def test_stages(self) -> None:
        """A postgres stage for compose, and the app built from wheels on a slim base, last."""
        stages = dockerfile_instructions("FROM")
        assert stages[0].endswith("AS postgres")
        assert stages[-1] == "python:3.12-slim AS app"

    def test_runs_as_a_user_with_task_history_as_entry_point(self) -> None:
        """USER is not root, the entry point is task-history."""
        assert dockerfile_instructions("USER") == ["task-history"]
        assert dockerfile_instructions("ENTRYPOINT") == ['["task-history"]']

    def test_interpolation_helper(self) -> None:
        """The test's own interpolation follows Compose: defaults, given values, `$$`, `:?`."""
        assert interpolate("${A:-x}/${B}/$$/${C:-}", {"B": "y"}) == "x/y/$/"
        assert interpolate("${A:?needed}", {"A": "z"}) == "z"
        with pytest.raises(MissingVariableError, match="A: needed"):
            interpolate("${A:?needed}", {"A": ""})


def published(service: dict[str, Any]) -> list[tuple[str, range, int]]:
    """(host address, host ports, container port) of each `[ADDRESS:]HOST[-LAST]:PORT` mapping."""
    result = []
    for mapping in service.get("ports", []):
        *address, host, container = mapping.split(":")
        first, _, last = host.partition("-")
        result.append(("".join(address), range(int(first), int(last or first) + 1), int(container)))
    return result


class TestUsableFromTheHost:
    """Only the API and the metrics are published, on loopback; the guide works without more."""

    def test_only_the_api_and_metrics_are_published_on_loopback(self) -> None:
        """No port of PostgreSQL or RabbitMQ is published; every published port is 127.0.0.1."""
        services = load_compose()["services"]
        publishing = sorted(name for name, service in services.items() if "ports" in service)
        assert publishing == ["api", "consumer"]
        for name in publishing:
            for address, _, _ in published(services[name]):
                assert address == "127.0.0.1", name

    def test_every_consumer_replica_gets_a_metrics_port(self) -> None:
        """The consumers' metrics port is published on loopback, one host port per replica."""
        compose = load_compose()
        consumer = compose["services"]["consumer"]
        ((address, ports, container),) = published(consumer)
        assert (address, container) == ("127.0.0.1", 9464)
        assert ports.start == 9464
        assert len(ports) >= int(consumer["deploy"]["replicas"])
        more = load_compose(EXAMPLE_ENV | {"CONSUMER_METRICS_PORTS": "19464-19467"})["services"][
            "consumer"
        ]
        assert published(more)[0][1] == range(19464, 19468)

    def test_the_api_is_published_on_loopback(self) -> None:
        """`task-history serve` listens on all of its container's interfaces, 8080 on the host."""
        api = load_compose()["services"]["api"]
        everywhere = "0.0.0.0"  # noqa: S104  # inside its container, so that the port reaches it
        assert api["command"][:3] == ["serve", "--host", everywhere]
        assert published(api) == [("127.0.0.1", range(8080, 8081), 8080)]
        assert api["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}

    def test_the_api_reads_as_the_reader_role(self) -> None:
        """The api's PostgreSQL user is a login member of task_history_reader, not the owner."""
        compose = load_compose(
            EXAMPLE_ENV | {"HISTORY_READER_USER": "board", "HISTORY_READER_PASSWORD": "pw"}
        )
        url = urlsplit(compose["services"]["api"]["environment"]["TASK_HISTORY_DATABASE_URL"])
        assert (url.username, url.password) == ("board", "pw")
        roles = compose["configs"]["postgres-roles"]["content"]
        assert "CREATE ROLE task_history_reader NOLOGIN;" in roles
        assert "\"board\" LOGIN PASSWORD 'pw' IN ROLE task_history_reader;" in " ".join(
            roles.split()
        )

    def test_the_guide_runs_commands_inside_the_stack(self) -> None:
        """Each `docker compose exec|run ... SERVICE task-history ...` of the guide parses."""
        guide = OPERATING.read_text(encoding="utf-8")
        services = load_compose()["services"]
        found = re.findall(
            r"^docker compose (exec|run --rm) (\w+) (.+?)(?:\s+#.*)?$", guide, re.MULTILINE
        )
        commands = [(how, service, rest) for how, service, rest in found if service in APP_SERVICES]
        assert len(commands) >= 3
        for how, service, rest in commands:
            assert service in services
            argv = shlex.split(rest)
            if how == "exec":  # a command run in the container: the program named
                assert argv[0] == "task-history", rest
                argv = argv[1:]
            else:  # a new container of the image, whose entry point is task-history
                assert argv[0] != "task-history", rest
            check_command(argv)
