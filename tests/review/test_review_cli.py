import json

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
