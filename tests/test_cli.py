from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from thresher.cli import main


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ingest_through_click_runner(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"body": "hello there", "y": "pos"}, {"body": ""}])
    runner = CliRunner()
    args = [
        "curate",
        "ingest",
        str(src),
        "-p",
        str(tmp_path / "p"),
        "--text-col",
        "body",
        "--label-col",
        "y",
        "--json",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["rejected"], summary["noop"]) == (1, 1, False)
    again = runner.invoke(main, args)
    assert json.loads(again.stdout)["noop"] is True


def test_user_errors_exit_1_with_one_line_and_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    (tmp_path / "x.csv").write_text("body\nhello\n")
    result = runner.invoke(main, ["curate", "ingest", str(tmp_path / "x.csv"), "-p", str(tmp_path)])
    assert result.exit_code == 1
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "x.csv" in message and "--text-col" in message
    assert runner.invoke(main, ["curate", "ingest", "-p", str(tmp_path)]).exit_code == 2
    assert runner.invoke(main, ["curate", "ingest", "--bogus"]).exit_code == 2


def test_init_writes_a_config_that_ingest_uses(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(tmp_path / "p")]).exit_code == 0
    config = tmp_path / "p" / "thresher.yaml"
    config.write_text(config.read_text().replace("  text: text", "  text: body"))
    src = _jsonl(tmp_path / "a.jsonl", [{"body": "from the config column"}])
    result = runner.invoke(
        main, ["curate", "ingest", str(src), "-p", str(tmp_path / "p"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kept"] == 1
    assert runner.invoke(main, ["init", str(tmp_path / "p")]).exit_code == 1


def test_demo_corpus_ingests(tmp_path):
    result = CliRunner().invoke(main, ["curate", "ingest", "--demo", "-p", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kept"] > 12_000 and set(summary["labels"]) == {"fresh", "rotten"}


def test_real_subprocess_and_lazy_imports(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "two"}, "oops"])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "thresher",
            "curate",
            "ingest",
            str(src),
            "-p",
            str(tmp_path / "p"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["kept"] == 2
    probe = (
        "import sys; from thresher.cli import main\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pyarrow', 'numpy', 'pandas',"
        " 'sklearn', 'argilla', 'sentence_transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"`thresher --help` imports heavy modules: {loaded}"
    version = subprocess.run(
        [sys.executable, "-m", "thresher", "--version"], capture_output=True, text=True, check=True
    )
    assert "thresher" in version.stdout


def _command(path: str):
    command = main
    for word in path.split():
        command = command.commands[word]
    return command


def test_every_override_names_a_flag_of_its_command_and_a_config_key():
    from thresher.cli_overrides import OVERRIDES, TurnsOff
    from thresher.config import load_config

    config = load_config(None)
    for path, table in OVERRIDES.items():
        params = {p.name for p in _command(path).params}
        assert set(table) <= params, f"{path}: no such flags {set(table) - params}"
        for target in table.values():
            config.get(target.key if isinstance(target, TurnsOff) else target)


def test_unset_flags_fall_through_and_no_flags_turn_keys_off(tmp_path):
    from thresher.cli_overrides import config_for, overrides_for

    unset = dict.fromkeys(["dataset", "priority"]) | {"no_vectors": False}
    assert overrides_for("review push", unset) == dict.fromkeys(
        ["review.dataset", "review.priority", "review.vectors"]
    )
    given = {"dataset": "d", "priority": None, "no_vectors": True}
    config = config_for(tmp_path, "review push", given, extra={"review.priority": "p"})
    assert config.get("review.dataset") == "d" and config.get("review.vectors") is False
    assert config.get("review.priority") == "p" and config.sources[-1] == "flags"
    assert config_for(tmp_path, "review push", unset).sources == ("defaults",)
