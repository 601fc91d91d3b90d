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
