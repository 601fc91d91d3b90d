"""The production compose file parses, and its names agree with the code and .env.example."""

import re
from pathlib import Path

import yaml

from review import server

ROOT = Path(__file__).resolve().parents[2]
VAR = re.compile(r"(?<!\$)\$\{(?P<name>[A-Z0-9_]+)(?P<rest>[^}]*)\}")


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_services_images_and_health_checks():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"argilla", "worker", "postgres", "elasticsearch", "redis"}
    assert (
        services["argilla"]["image"] == f"argilla/argilla-server:v{server.ARGILLA_SERVER_VERSION}"
    )
    assert services["worker"]["image"] == services["argilla"]["image"]
    assert "elasticsearch:8." in services["elasticsearch"]["image"]
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], (name, volume)
    assert "worker" in services["worker"]["command"]


def test_server_settings_match_what_the_embedded_server_sets():
    env = _compose()["services"]["argilla"]["environment"]
    # every setting the embedded server passes (except its engine choice) is set in production too
    embedded = {
        "ARGILLA_HOME_PATH",
        "ARGILLA_ELASTICSEARCH",
        "ARGILLA_REDIS_URL",
        "ARGILLA_AUTH_SECRET_KEY",
        "ARGILLA_ENABLE_TELEMETRY",
        "ARGILLA_SEARCH_ENGINE",
    }
    assert embedded <= set(env)
    assert env["ARGILLA_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["ARGILLA_ELASTICSEARCH"] == "http://elasticsearch:9200"


def test_every_variable_is_in_env_example_and_secrets_are_required():
    text = (ROOT / "docker-compose.yml").read_text()
    example = _env_example()
    used = {m["name"]: m["rest"] for m in VAR.finditer(text)}
    assert set(used) <= set(example), set(used) - set(example)
    for secret in (
        "POSTGRES_PASSWORD",
        "ARGILLA_AUTH_SECRET_KEY",
        "ARGILLA_API_KEY",
        "ARGILLA_OWNER_PASSWORD",
    ):
        assert used[secret].startswith(":?"), secret  # compose refuses to start without it
        assert "change-me" in example[secret]
    # the client-side names are the ones the code reads
    assert server.ENV_URL in example and server.ENV_KEY in example
    assert example[server.ENV_URL].endswith(":6900")


def test_env_file_is_ignored_by_git():
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_published_ports_bind_loopback_by_default():
    import re

    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            # Resolve ${VAR:-default} to its default, as compose does with VAR unset.
            resolved = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", port)
            assert resolved.split(":")[0] == "127.0.0.1", (name, port)
