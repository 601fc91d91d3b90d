"""Project configuration: defaults < DIR/thresher.yaml < env THRESHER_* < CLI flags.

The defaults are the commented template in ``thresher.config_defaults`` (``DEFAULTS`` is parsed
from ``TEMPLATE``, both importable from here), so ``thresher init`` always writes a file that
matches what the code does.

Environment overrides use ``THRESHER_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``THRESHER_DEDUP__THRESHOLD=0.9`` or ``THRESHER_COLUMNS__TEXT=body``; values are parsed as YAML
scalars (``0.9`` is a float, ``true`` a bool, ``[a, b]`` a list). Every layer is type-checked by
``thresher.config_model`` (a wrong-typed value is one ``ConfigError`` line naming the key), and
``Config`` holds the typed values.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.config_defaults import DEFAULTS, TEMPLATE
from thresher.errors import ConfigError

CONFIG_FILE = "thresher.yaml"
ENV_PREFIX = "THRESHER_"


@dataclass(frozen=True)
class Config:
    """Resolved, type-checked project configuration (a nested mapping), the layers it came from,
    and where each key set above the defaults came from (``origins``: dotted key → layer)."""

    data: dict[str, Any]
    sources: tuple[str, ...] = field(default_factory=tuple)
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def get(self, dotted: str) -> Any:
        """Value at ``section.key`` (``KeyError`` names the key if it does not exist)."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(f"no config key {dotted!r}")
            node = node[part]
        return node

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.get(name))

    def with_overrides(self, overrides: Mapping[str, Any], origin: str | None = None) -> Config:
        """A copy with ``{"section.key": value}`` overrides applied and type-checked (a value of
        the wrong type is a ``ConfigError`` naming the key and ``origin``: by default the running
        command's flag of the same name, else "a command-line flag"); ``None`` values are
        skipped, so unset CLI flags fall through to the lower layers."""
        from thresher.config_model import validate_config

        data = copy.deepcopy(self.data)
        origins = dict(self.origins)
        applied = False
        for dotted, value in overrides.items():
            if value is None:
                continue
            where = origin or _flag_origin(dotted)
            _set_dotted(data, dotted, value, origin=where)
            origins[dotted] = where
            applied = True
        if not applied:
            return Config(data, self.sources, origins)
        return Config(validate_config(data, origins), self.sources + ("flags",), origins)


def _flag_origin(dotted: str) -> str:
    """``flag --threshold`` for ``dedup.threshold`` when the click command being run has an
    option of that name (the key's last part), else "a command-line flag"."""
    click = sys.modules.get("click")  # never imported here: only a running CLI has a context
    ctx = click.get_current_context(silent=True) if click is not None else None
    name = dotted.rsplit(".", 1)[-1]
    for param in ctx.command.params if ctx is not None else ():
        if isinstance(param, click.Option) and param.name == name and param.opts:
            return f"flag {max(param.opts, key=len)}"
    return "a command-line flag"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown config key {dotted!r} (from {origin})")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {dotted!r} (from {origin})")
    node[parts[-1]] = value


def _merge(
    base: dict[str, Any],
    layer: Mapping[str, Any],
    origin: str,
    prefix: str = "",
    origins: dict[str, str] | None = None,
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(
                f"unknown config key {dotted!r} in {origin}; "
                f"valid keys here: {', '.join(sorted(base))}"
            )
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {dotted!r} in {origin} must be a mapping")
            _merge(base[key], value, origin, prefix=f"{dotted}.", origins=origins)
        else:
            base[key] = value
            if origins is not None:
                origins[dotted] = origin


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``THRESHER_A__B=v`` → ``{"a.b": v}`` with ``v`` parsed as a YAML scalar.

    Variables that are not config keys (THRESHER_HOME and the like) are ignored here."""
    return {dotted: value for dotted, (value, _) in _env_layer(environ).items()}


def _env_layer(environ: Mapping[str, str] | None) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (parsed value, variable name)}`` of the ``THRESHER_*`` config variables."""
    import yaml

    environ = os.environ if environ is None else environ
    out: dict[str, tuple[Any, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if not _is_key(dotted):
            continue
        try:
            out[dotted] = (yaml.safe_load(raw) if raw != "" else None, name)
        except yaml.YAMLError as err:
            raise ConfigError(f"environment variable {name} is not a valid value: {err}") from err
    return out


def _is_key(dotted: str) -> bool:
    node: Any = DEFAULTS
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def load_config(project_dir: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then ``DIR/thresher.yaml`` (if present), then ``THRESHER_*`` environment; the
    result is type-checked (``ConfigError``: one line naming the key, its layer and the type)."""
    import yaml

    from thresher.config_model import validate_config

    data = copy.deepcopy(DEFAULTS)
    sources = ["defaults"]
    origins: dict[str, str] = {}
    if project_dir is not None:
        path = Path(project_dir) / CONFIG_FILE
        if path.exists():
            try:
                layer = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise ConfigError(
                    f"{path}: not valid YAML ({err}); fix or delete the file"
                ) from err
            if not isinstance(layer, Mapping):
                raise ConfigError(f"{path}: the top level must be a mapping of keys")
            _merge(data, layer, str(path), origins=origins)
            sources.append(str(path))
    env = _env_layer(environ)
    for dotted, (value, name) in env.items():
        _set_dotted(data, dotted, value, origin="environment")
        origins[dotted] = f"environment {name}"
    if env:
        sources.append("environment")
    return Config(validate_config(data, origins), tuple(sources), origins)


def write_template(project_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the commented default ``thresher.yaml`` into ``project_dir``."""
    path = Path(project_dir) / CONFIG_FILE
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    from thresher.project import atomic_write_text

    atomic_write_text(path, TEMPLATE)
    return path
