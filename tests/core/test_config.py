import pytest
import yaml

from thresher.config import DEFAULTS, TEMPLATE, env_overrides, load_config, write_template
from thresher.errors import ConfigError


def test_template_is_the_defaults_and_commented(tmp_path):
    path = write_template(tmp_path)
    assert yaml.safe_load(path.read_text()) == DEFAULTS
    assert sum(line.lstrip().startswith("#") for line in TEMPLATE.splitlines()) >= 5
    with pytest.raises(ConfigError, match="already exists"):
        write_template(tmp_path)


def test_precedence_flag_over_env_over_file_over_defaults(tmp_path):
    (tmp_path / "thresher.yaml").write_text("columns:\n  text: body\n  label: y\nseed: 3\n")
    env = {"THRESHER_COLUMNS__LABEL": "sentiment", "THRESHER_SEED": "7", "THRESHER_HOME": "/x"}
    config = load_config(tmp_path, environ=env)
    assert config.get("columns.text") == "body"  # file over default
    assert config.get("columns.label") == "sentiment"  # env over file
    assert config.get("seed") == 7  # env parsed as a YAML scalar
    assert config.get("ingest.max_text_chars") == DEFAULTS["ingest"]["max_text_chars"]
    flagged = config.with_overrides({"columns.label": "gold", "columns.text": None})
    assert flagged.get("columns.label") == "gold"  # flag over env
    assert flagged.get("columns.text") == "body"  # unset flag falls through
    assert flagged.sources[-1] == "flags"


def test_unknown_keys_are_one_line_errors(tmp_path):
    (tmp_path / "thresher.yaml").write_text("ingest:\n  max_text_char: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'ingest.max_text_char'"):
        load_config(tmp_path)
    (tmp_path / "thresher.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, environ={}).with_overrides({"nope.key": 1})


def test_env_ignores_non_config_variables():
    assert env_overrides({"THRESHER_HOME": "/tmp/x", "THRESHER_PROJECT": "p", "PATH": "/bin"}) == {}


# --- type checks: every layer, one line naming the key, its layer and the expected type


def test_wrong_type_from_the_environment_names_the_variable_and_the_type():
    env = {"THRESHER_DEDUP__THRESHOLD": "high"}
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=env)
    assert str(err.value) == (
        "config key dedup.threshold = 'high' (from environment THRESHER_DEDUP__THRESHOLD): "
        "expected a number between 0 and 1"
    )
    with pytest.raises(ConfigError, match=r"config key seed = True .*an integer >= 0"):
        load_config(None, environ={"THRESHER_SEED": "true"})  # a boolean is not a number
    with pytest.raises(ConfigError, match=r"config key dedup = 1 .*THRESHER_DEDUP\).*mapping"):
        load_config(None, environ={"THRESHER_DEDUP": "1"})


def test_wrong_type_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "thresher.yaml"
    path.write_text("dedup:\n  threshold: high\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, environ={})
    message = str(err.value)
    assert message.startswith(f"config key dedup.threshold = 'high' (from {path}): ")
    assert message.endswith("expected a number between 0 and 1") and "\n" not in message
    path.write_text("tune:\n  precision: fp8\n  batch_size: 0\nreview:\n  vectors: maybe\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, environ={})
    message = str(err.value)  # every bad key, still one line
    assert "\n" not in message
    assert "tune.precision = 'fp8'" in message and "one of auto, bf16, fp16, fp32" in message
    assert "tune.batch_size = 0" in message and "an integer >= 1" in message
    assert "review.vectors = 'maybe'" in message and "true or false" in message
    # a good value in a higher layer fixes a bad one below it
    path.write_text("dedup:\n  threshold: high\n")
    fixed = load_config(tmp_path, environ={"THRESHER_DEDUP__THRESHOLD": "0.7"})
    assert fixed.get("dedup.threshold") == 0.7


def test_wrong_type_from_an_override_is_a_config_error():
    config = load_config(None, environ={})
    with pytest.raises(ConfigError) as err:
        config.with_overrides({"dedup.threshold": 1.5})
    assert str(err.value) == (
        "config key dedup.threshold = 1.5 (from a command-line flag): "
        "expected a number between 0 and 1"
    )
    with pytest.raises(ConfigError, match=r"score.learners = 'emb,foo'.*emb, svm, nb, lr"):
        config.with_overrides({"score.learners": "emb,foo"})
    with pytest.raises(ConfigError, match=r"review.port = 70000 .*between 0 and 65535"):
        config.with_overrides({"review.port": 70000})
    with pytest.raises(ConfigError, match=r"loop.learner = 'svm' .*one of fast, tfidf, lora"):
        config.with_overrides({"loop.learner": "svm"})
    assert config.with_overrides({"dedup.threshold": 0.7}).get("dedup.threshold") == 0.7


def test_coercions_users_rely_on_still_work(tmp_path):
    (tmp_path / "thresher.yaml").write_text(
        "labels: [1, 2]\n"  # numbers read as label names
        "dedup:\n  threshold: 1\n"  # an int where a float is expected
        "tune:\n  lr: 1e-4\n  compile: off\n  target_modules: q_proj, v_proj\n"
    )
    env = {"THRESHER_SCORE__FOLDS": "10", "THRESHER_SCORE__LEARNERS": "svm,nb"}
    config = load_config(tmp_path, environ=env)
    assert config.get("labels") == ["1", "2"]
    assert config.get("dedup.threshold") == 1.0 and isinstance(config.get("dedup.threshold"), float)
    assert config.get("tune.lr") == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    assert config.get("tune.compile") == "off"  # YAML reads a bare off as False
    assert config.get("tune.target_modules") == ["q_proj", "v_proj"]
    assert config.get("score.folds") == 10
    assert config.get("score.learners") == ["svm", "nb"]
    assert config.get("simulate.strategies") == ["margin", "entropy", "random"]
    assert config.get("review.dataset") is None  # nullable keys keep their null default
    assert config.section("score")["folds"] == 10  # the rest of the code reads typed values


def test_every_default_validates_and_every_declared_key_exists():
    from thresher.config_model import KEYS, specs, validate_config

    typed = validate_config(DEFAULTS)
    leaves = specs(DEFAULTS)
    assert set(KEYS) <= set(leaves), f"declared but not in TEMPLATE: {set(KEYS) - set(leaves)}"
    untyped = [k for k in leaves if _default_of(k) is None and k not in KEYS]
    assert not untyped, f"null defaults carry no type: declare {untyped} in config_model.KEYS"
    assert typed["dedup"]["threshold"] == DEFAULTS["dedup"]["threshold"]
    assert isinstance(typed["tune"]["epochs"], float)


def _default_of(dotted):
    node = DEFAULTS
    for part in dotted.split("."):
        node = node[part]
    return node


def test_an_undeclared_key_is_checked_by_its_defaults_type():
    from thresher.config_model import validate_config

    defaults = {
        "new": {"count": 5, "ratio": 0.5, "flag": False, "name": "x", "items": ["a"], "free": None}
    }
    good = {"new": {"count": 7, "ratio": 1, "flag": True, "name": 3, "items": "a,b", "free": [1]}}
    assert validate_config(good, defaults=defaults) == {
        "new": {
            "count": 7,
            "ratio": 1.0,
            "flag": True,
            "name": "3",
            "items": ["a", "b"],
            "free": [1],
        }
    }
    cases = {
        "count": ("many", "an integer"),
        "ratio": ("half", "a number"),
        "flag": ("perhaps", "true or false"),
        "name": (["x"], "a string"),
        "items": ({"a": 1}, "a list of strings (a YAML list or one comma-separated string)"),
    }
    for key, (value, expected) in cases.items():
        data = {"new": {**good["new"], key: value}}
        with pytest.raises(ConfigError) as err:
            validate_config(data, {f"new.{key}": "test"}, defaults=defaults)
        assert str(err.value) == (
            f"config key new.{key} = {value!r} (from test): expected {expected}"
        ), key


# --- through the CLI: exit 1, one line, no traceback


def _one_line_error(result):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_wrong_typed_config_exits_1_with_one_line(tmp_path):
    from click.testing import CliRunner

    from thresher.cli import main

    runner = CliRunner()
    project = tmp_path / "p"
    project.mkdir()
    args = ["curate", "dedup", "-p", str(project)]
    line = _one_line_error(runner.invoke(main, args, env={"THRESHER_DEDUP__THRESHOLD": "high"}))
    assert line == (
        "Error: config key dedup.threshold = 'high' (from environment "
        "THRESHER_DEDUP__THRESHOLD): expected a number between 0 and 1"
    )
    (project / "thresher.yaml").write_text("dedup:\n  threshold: high\n")
    line = _one_line_error(runner.invoke(main, args))
    assert "dedup.threshold = 'high'" in line and str(project / "thresher.yaml") in line
    (project / "thresher.yaml").unlink()
    line = _one_line_error(runner.invoke(main, [*args, "--threshold", "1.5"]))
    assert "dedup.threshold = 1.5 (from flag --threshold)" in line
    line = _one_line_error(
        runner.invoke(main, ["curate", "score", "-p", str(project), "--learners", "emb,bogus"])
    )
    assert "score.learners = 'emb,bogus' (from flag --learners)" in line and "emb, svm, nb" in line
    (project / "thresher.yaml").write_text("simulate:\n  noise: lots\n")
    line = _one_line_error(runner.invoke(main, ["simulate", "-p", str(project)]))
    assert "simulate.noise = 'lots'" in line and "a number between 0 and 1" in line


def test_a_list_that_must_name_something_refuses_an_empty_value():
    config = load_config(None, environ={})
    with pytest.raises(ConfigError, match=r"score\.learners = ''.*non-empty list"):
        config.with_overrides({"score.learners": ""})
    with pytest.raises(ConfigError, match=r"simulate\.strategies"):
        load_config(None, environ={"THRESHER_SIMULATE__STRATEGIES": "[]"})
    assert config.with_overrides({"score.learners": "nb"}).get("score.learners") == ["nb"]
