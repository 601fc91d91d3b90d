import json

import pytest
from click.testing import CliRunner

from thresher.cli import main


def test_status_and_push_without_a_server(tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARGILLA_API_URL", raising=False)
    runner = CliRunner()
    out = runner.invoke(main, ["review", "server", "status", "--json"])
    assert out.exit_code == 1  # scripts can test whether it runs
    assert json.loads(out.output)["running"] is False
    out = runner.invoke(main, ["review", "server", "status"])
    assert out.exit_code == 1 and "not running" in out.output
    out = runner.invoke(main, ["review", "push", "-p", str(tmp_path / "proj")])
    assert out.exit_code == 1
    assert "thresher review server up" in out.output and len(out.output.strip().splitlines()) == 1
    out = runner.invoke(main, ["review", "server", "down", "--json"])
    assert json.loads(out.output) == {"stopped": []}


def test_external_server_needs_both_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    out = CliRunner().invoke(main, ["review", "pull", "-p", str(tmp_path)])
    assert out.exit_code == 1 and "ARGILLA_API_KEY" in out.output


def test_review_config_section_has_the_defaults():
    from thresher.config import DEFAULTS

    assert DEFAULTS["review"]["min_submitted"] == 2
    assert DEFAULTS["review"]["workspace"] == "thresher"


def test_users_add_refuses_names_that_leave_the_users_folder(tmp_path, monkeypatch):
    """`users add ../owner` used to overwrite the owner's credentials with the new user's."""
    from review.server import Connection, ServerPaths
    from review.users import add_user, read_credentials
    from tests.helpers.names import HOSTILE
    from thresher.errors import InvalidNameError

    home = tmp_path / "home"
    paths = ServerPaths(home)
    paths.users_dir.mkdir(parents=True)
    owner = paths.owner_file
    owner.write_text('{"username": "owner", "api_key": "keep"}')
    victim = tmp_path / "abs" / "folder.json"
    victim.parent.mkdir()
    victim.write_text("keep")
    monkeypatch.setenv("THRESHER_HOME", str(home))
    monkeypatch.setenv("ARGILLA_API_URL", "http://127.0.0.1:9")  # never reached
    monkeypatch.setenv("ARGILLA_API_KEY", "k")
    runner = CliRunner()
    for name in [*HOSTILE, str(tmp_path / "abs" / "folder")]:
        out = runner.invoke(main, ["review", "users", "add", name, "-p", str(tmp_path / "p")])
        assert out.exit_code == 1, (name, out.output)
        assert len(out.output.strip().splitlines()) == 1 and "is not a valid name" in out.output
        conn = Connection("http://127.0.0.1:9", "k", external=True)
        with pytest.raises(InvalidNameError):  # the library refuses it too, before any request
            add_user(conn, name, paths=paths)
        with pytest.raises(InvalidNameError):
            read_credentials(name, paths)
    assert owner.read_text() == '{"username": "owner", "api_key": "keep"}'
    assert victim.read_text() == "keep" and list(paths.users_dir.iterdir()) == []
