"""The machinery under every config tree (the text ``Config`` in ``config.py``,
the MNIST ``ImageConfig`` in ``image/config.py``): validation helpers, a
dataclass tree from nested dicts with type checks, YAML/JSON files and preset
names, and dotted ``--set`` overrides. It knows no particular tree: each
function takes the tree's root class.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional

from .errors import TextVAEError

PRESET_DIR = Path(__file__).parent / "presets"
MAX_CONFIG_BYTES = 16 * 2**20  # a config is a few kilobytes; never read an endless file


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TextVAEError(message)


def _choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    _check(value in choices, f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict; a preset name is looked up too."""
    path = Path(path)
    if not path.exists():
        for candidate in (PRESET_DIR / path.name, PRESET_DIR / f"{path.name}.yaml"):
            if path.parent.name in ("", "presets") and candidate.exists():
                path = candidate
                break
        else:
            raise TextVAEError(f"config file {path} does not exist (presets: {', '.join(list_presets())})")
    _check(not path.is_dir(), f"config file {path} is a folder; give a YAML or JSON file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise TextVAEError(f"config file {path} is over {MAX_CONFIG_BYTES // 2**20} MiB: not a config")
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TextVAEError(f"cannot read config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise TextVAEError(f"config file {path} is not UTF-8 text (byte {error.start})") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            raw = load_yaml(text)
    except RecursionError:
        raise TextVAEError(f"cannot parse config file {path}: nested too deeply") from None
    except Exception as error:  # yaml and json raise several types
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TextVAEError(f"cannot parse config file {path}: {first_line}") from None
    if raw is None:
        raw = {}
    _check(isinstance(raw, dict), f"config file {path} must hold a mapping of sections")
    return raw


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent:
# "1e-3" and "1.0e3" would stay strings and be refused for train.lr.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-3`` as a float (as YAML 1.2 and JSON do)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def from_dict(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        _check(key in names, f"unknown config key {dotted!r} (known: {', '.join(sorted(names))})")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            _check(isinstance(value, dict), f"config key {dotted!r} must be a section")
            kwargs[key] = from_dict(kind, value, dotted + ".")
        else:
            kwargs[key] = _coerce(value, kind, dotted)
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, dotted: str) -> Any:
    """Check that ``value`` fits the annotated type (ints may stand for floats)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], dotted)
    if kind is bool:
        _check(isinstance(value, bool), f"config key {dotted!r} must be true or false, got {_show(value)}")
    elif kind is int:
        _check(isinstance(value, int) and not isinstance(value, bool),
               f"config key {dotted!r} must be an integer, got {_show(value)}")
        _check(abs(value) < 2**63, f"config key {dotted!r} must fit in 64 bits, got {_show(value)}")
    elif kind is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"config key {dotted!r} must be a number, got {_show(value)}")
        _check(abs(value) < 1e300 and value == value, f"config key {dotted!r} must be finite, got {_show(value)}")
        return float(value)
    elif kind is str:
        _check(isinstance(value, str), f"config key {dotted!r} must be a string, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    """A value for an error message, cut short (a fuzzed --set may be megabytes)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit for str()
        return "a number of over 4,300 digits"
    return text if len(text) <= 60 else text[:57] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.latent_dim=16"`` -> (["model", "latent_dim"], 16) with a YAML-typed value."""
    import yaml

    _check("=" in text, f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    _check(bool(key.strip()), f"--set expects KEY=VALUE, got {text!r}")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML: the text as typed
        parsed = value
    if isinstance(parsed, (dict, list)):
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], root: type) -> dict[str, Any]:
    """Apply ``--set`` strings to a raw config dict of the tree ``root``; keys are checked by ``from_dict``."""
    for text in overrides:
        path, value = parse_override(text)
        _check(len(path) == 2, f"--set key {'.'.join(path)!r} must be SECTION.FIELD, e.g. model.latent_dim")
        section, name = path
        sections = {f.name for f in dataclasses.fields(root)}
        _check(section in sections, f"unknown config section {section!r} (known: {', '.join(sorted(sections))})")
        target = raw.setdefault(section, {})
        if not isinstance(value, str) and name in _string_fields(section, root):
            value = text.split("=", 1)[1].strip()  # as typed: a path "007" is not 7, nor a name "1e3" 1000.0
        target[name] = value
    return raw


def _string_fields(section: str, root: type) -> set[str]:
    cls = typing.get_type_hints(root)[section]
    return {name for name, kind in typing.get_type_hints(cls).items() if kind is str}


def build_tree(root: type, config_file: Optional[str | list[str]] = None, overrides: Optional[list[str]] = None,
               base: Optional[dict[str, Any]] = None) -> Any:
    """The tree ``root`` from optional files (or a base dict) plus ``--set`` overrides.
    ``config_file`` is one file or a list (``--config`` repeated), later ones winning."""
    raw = dict(base or {})
    for file in [config_file] if isinstance(config_file, (str, Path)) else config_file or []:
        raw = _merge(raw, read_config_file(file))
    raw = apply_overrides(raw, overrides or [], root)
    return root.from_dict(raw)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged
