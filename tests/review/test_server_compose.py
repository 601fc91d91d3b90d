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


PREFLIGHT = ROOT / "scripts" / "compose-preflight.sh"
SECRETS = (
    "POSTGRES_PASSWORD",
    "ARGILLA_AUTH_SECRET_KEY",
    "ARGILLA_API_KEY",
    "ARGILLA_OWNER_PASSWORD",
)


def _preflight(env_file, **env):
    import os
    import subprocess

    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        ["sh", str(PREFLIGHT), str(env_file)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _env_file(path, **values):
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={values[key]}" if key in values else line)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def test_preflight_refuses_the_placeholder_secrets(tmp_path):
    out = _preflight(_env_file(tmp_path / ".env"))
    assert out.returncode == 1 and out.stdout == ""
    for secret in SECRETS:
        assert f"{secret} is still the .env.example placeholder" in out.stderr
    out = _preflight(tmp_path / "missing.env")
    assert out.returncode == 1
    assert all(f"{secret} is not set" in out.stderr for secret in SECRETS)


def test_preflight_passes_real_secrets_and_reads_the_environment_first(tmp_path):
    import secrets

    real = {name: secrets.token_hex(32) for name in SECRETS}
    env_file = _env_file(tmp_path / ".env", **real)
    out = _preflight(env_file)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # the environment wins over .env, as it does for docker compose
    placeholder = _env_example()["ARGILLA_API_KEY"]
    out = _preflight(env_file, ARGILLA_API_KEY=placeholder)
    assert out.returncode == 1 and "ARGILLA_API_KEY" in out.stderr and "environment" in out.stderr
    half = _env_file(tmp_path / "half.env", **{**real, "ARGILLA_API_KEY": placeholder})
    assert _preflight(half, ARGILLA_API_KEY=real["ARGILLA_API_KEY"]).returncode == 0
    # quoted values are values; a too short one is refused
    quoted = {**real, "POSTGRES_PASSWORD": f'"{real["POSTGRES_PASSWORD"]}"'}
    assert _preflight(_env_file(tmp_path / "q.env", **quoted)).returncode == 0
    short = _env_file(tmp_path / "s.env", **{**real, "ARGILLA_AUTH_SECRET_KEY": "abc123"})
    out = _preflight(short)
    assert out.returncode == 1 and "ARGILLA_AUTH_SECRET_KEY is shorter" in out.stderr
    # a .env other users can read passes, with a warning
    env_file.chmod(0o644)
    out = _preflight(env_file)
    assert out.returncode == 0 and "chmod 600" in out.stderr


def test_compose_instructions_run_the_preflight_first():
    command = "scripts/compose-preflight.sh && docker compose up -d"
    assert command in (ROOT / "docker-compose.yml").read_text()
    assert command in (ROOT / "README.md").read_text()
