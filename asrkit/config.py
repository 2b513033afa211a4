"""Experiment configs: nested dataclasses loaded from YAML plus ``key=value`` overrides.

Every component (data, model, trainer) owns a dataclass config; an experiment config nests them.
One YAML file describes an experiment, the command line tweaks it, and the resolved result is
written next to the checkpoints so decoding and export never need the architecture repeated::

    cfg = load_config(ExperimentConfig, "conf/zipformer_ctc.yaml",
                      ["train.lr=1e-3", "model.encoder_conf.num_heads=4,4"])
    save_config(cfg, exp_dir / "config.yaml")
    assert load_config(ExperimentConfig, exp_dir / "config.yaml") == cfg

Rules:
- Override values are parsed with ``yaml.safe_load`` (``1`` -> int, ``true`` -> bool, ``[1, 2]`` ->
  list, ``null`` -> None) and then coerced to the field's type (``1e-3`` -> float for a float field,
  ``4,4`` -> ``[4, 4]`` for a list or tuple field).
- Unknown keys raise a ``ConfigError`` naming the key and listing the valid ones.
- Fields typed ``dict`` / ``Dict[str, Any]`` are free-form (e.g. encoder kwargs): any key goes. An
  override there keeps the type of the value it replaces; a new unquoted comma-separated value
  (``num_heads=4,4``) becomes a list, quote it (``name='a,b'``) to keep a string.
- YAML lists stay lists unless the dataclass field is a tuple.
"""

import copy
import dataclasses
import difflib
import logging
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type, TypeVar, Union

import yaml

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """A config key or value that does not fit the dataclass it is loaded into."""


_MISSING = object()


def _type_hints(cls: type) -> Dict[str, Any]:
    """Field types, with string annotations (``from __future__ import annotations``) resolved."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward reference: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _strip_optional(tp: Any) -> Tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; other types -> ``(tp, False)``."""
    if typing.get_origin(tp) is Union:
        args = typing.get_args(tp)
        if type(None) in args:
            rest = tuple(a for a in args if a is not type(None))
            return (rest[0] if len(rest) == 1 else Union[rest]), True
    return tp, False


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_free_form(tp: Any) -> bool:
    tp, _ = _strip_optional(tp)
    return tp is dict or typing.get_origin(tp) is dict


def _split_commas(value: str) -> List[Any]:
    return [yaml.safe_load(part.strip()) for part in value.split(",")]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML) to type ``tp`` or raise a ConfigError naming ``key``."""
    if tp is Any or tp is object or tp is dataclasses.MISSING:
        return value
    tp, optional = _strip_optional(tp)
    if value is None or (optional and value == "None"):
        if optional or tp is type(None):
            return None
        raise ConfigError(f"config key {key!r} may not be null (expected {_type_name(tp)})")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping of {tp.__name__} fields, got {value!r}")
        return config_from_dict(tp, value, _prefix=key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} fits none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, str):
            value = _split_commas(value)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"config key {key!r} expects {len(args)} values ({_type_name(tp)}), got {value!r}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (tp is tuple or origin is tuple) else items
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return copy.deepcopy(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)  # "1e3" is a str to PyYAML
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # "1e-3" is a str to PyYAML (it wants "1.0e-3")
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    if isinstance(tp, type) and issubclass(tp, os.PathLike):
        return tp(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown_key(key: str, prefix: str, cls: type) -> ConfigError:
    full = f"{prefix}.{key}" if prefix else key
    where = f"under {prefix!r} ({cls.__name__})" if prefix else f"in {cls.__name__}"
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {full!r}{hint}; valid keys {where}: {', '.join(names)}")


def config_from_dict(cls: Type[T], d: Optional[Dict[str, Any]], _prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, coercing types; missing keys keep defaults."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ConfigError(f"config {'at ' + repr(_prefix) if _prefix else 'file'} must be a mapping, got {d!r}")
    hints = _type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise _unknown_key(str(key), _prefix, cls)
        full = f"{_prefix}.{key}" if _prefix else key
        kwargs[key] = _coerce(value, hints.get(key, Any), full)
    init_missing = [n for n, f in names.items() if f.init and n not in kwargs
                    and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if init_missing:
        where = f" under {_prefix!r}" if _prefix else ""
        raise ConfigError(f"config{where} ({cls.__name__}) is missing required keys: {', '.join(init_missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        where = f" at {_prefix!r}" if _prefix else ""
        raise ConfigError(f"invalid {cls.__name__} config{where}: {e}") from e


def config_to_dict(cfg: Any) -> Any:
    """A dataclass (tree) as plain YAML-safe data: dicts, lists, str, int, float, bool, None."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, os.PathLike):
        return os.fspath(cfg)
    return cfg


def _parse_override(item: str) -> Tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key; use dotted keys like train.lr=1e-3")
    return key, raw


def _free_form_value(raw: str, old: Any) -> Any:
    """Parse an override inside a free-form dict: type follows the value it replaces."""
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(old, str) and value is not None:
        return value if isinstance(value, str) else raw.strip()  # "4,4,4"-style strings stay strings
    if isinstance(value, str) and "," in value and not raw.strip()[:1] in ("'", '"'):
        value = _split_commas(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(cfg: T, overrides: Iterable[str] = ()) -> T:
    """Return a copy of dataclass ``cfg`` with ``key=value`` overrides (dotted keys) applied."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, raw = _parse_override(item)
        parts = key.split(".")
        node: Any = cfg
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            prefix = ".".join(parts[:i])
            here = ".".join(parts[: i + 1])
            if dataclasses.is_dataclass(node):
                names = {f.name for f in dataclasses.fields(node)}
                if part not in names:
                    raise ConfigError(f"{_unknown_key(part, prefix, type(node))} (override {item!r})")
                tp = _type_hints(type(node)).get(part, Any)
                if last:
                    value = yaml.safe_load(raw) if raw.strip() else ""
                    if _is_free_form(tp) and not isinstance(value, (dict, type(None))):
                        raise ConfigError(f"config key {here!r} is a mapping; set its entries ({here}.KEY=VALUE) "
                                          f"or give a YAML mapping ({here}={{a: 1}})")
                    setattr(node, part, _coerce(value, tp, here))
                else:
                    child = getattr(node, part)
                    if child is None:
                        inner, _ = _strip_optional(tp)
                        if _is_dataclass_type(inner):
                            child = inner()
                        elif _is_free_form(tp):
                            child = {}
                        else:
                            raise ConfigError(f"config key {here!r} is null; cannot set {key!r} inside it")
                        setattr(node, part, child)
                    node = child
            elif isinstance(node, dict):
                if last:
                    node[part] = _free_form_value(raw, node.get(part, _MISSING))
                else:
                    child = node.get(part)
                    if child is None:
                        child = node[part] = {}
                    elif not isinstance(child, dict):
                        raise ConfigError(f"config key {here!r} is {child!r}, not a mapping; cannot set {key!r}")
                    node = child
            else:
                raise ConfigError(f"config key {prefix!r} is {node!r}, not a mapping; cannot set {key!r}")
    # Rebuild from plain data so every value is re-validated and __post_init__ runs again.
    return config_from_dict(type(cfg), config_to_dict(cfg))


def load_config(cls: Type[T], yaml_path: Optional[Union[str, Path]] = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, updated by the YAML file (if given), then by ``key=value`` overrides."""
    data: Dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse YAML config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    try:
        cfg = config_from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {yaml_path})" if yaml_path else str(e)) from None
    return apply_overrides(cfg, list(overrides))


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    """Write ``cfg`` as YAML (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=None)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    log.info("saved config to %s", path)
