"""Config files, dotted overrides and the JSON form, with every key and type checked.

A config file `configs/NAME.py` defines `get_config() -> Config`. Overrides on
the command line use dotted paths: `--config.model.num_layers=4`; in Python,
`config.updated({"model.num_layers": 4})`. A wrong key or type is an
`InputError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import typing
from typing import Any

from lensjax.config.sections import Config
from lensjax.errors import InputError


def load_config_file(path: str) -> Config:
  """Runs `get_config()` of a config file."""
  if not os.path.isfile(path):
    raise InputError(f"config file {path!r} does not exist; pass a file such as configs/quickstart.py.")
  spec = importlib.util.spec_from_file_location("_lensjax_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a config file is user input: report, don't trace
    raise InputError(f"config file {path!r} failed to load ({type(e).__name__}: {e}); fix the file.") from e
  if not hasattr(module, "get_config"):
    raise InputError(f"config file {path!r} defines no get_config(); add one that returns lensjax.config.Config.")
  config = module.get_config()
  if not isinstance(config, Config):
    raise InputError(f"get_config() in {path!r} returned {type(config).__name__}; it must return lensjax.config.Config.")
  return config


def _field_types(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _all_keys(config: Config) -> list[str]:
  keys = []
  for section in dataclasses.fields(config):
    for f in dataclasses.fields(getattr(config, section.name)):
      keys.append(f"{section.name}.{f.name}")
  return keys


def _parse_value(key: str, text: str, kind: type) -> Any:
  try:
    if kind is bool:
      lowered = text.strip().lower()
      if lowered in ("true", "1", "yes"):
        return True
      if lowered in ("false", "0", "no"):
        return False
      raise ValueError
    if kind is int:
      value = float(text) if ("e" in text.lower() and not text.lower().startswith("0x")) else int(text, 0)
      if isinstance(value, float):
        if not value.is_integer():
          raise ValueError
        value = int(value)
      return value
    if kind is float:
      return float(text)
    return text
  except ValueError:
    raise InputError(f"config key {key} expects {kind.__name__}, got {text!r}; pass e.g. --config.{key}={_example(kind)}.") from None


def _example(kind: type) -> str:
  return {bool: "true", int: "4", float: "0.001"}.get(kind, "name")


def unknown_key_error(key: str, config: Config) -> InputError:
  close = difflib.get_close_matches(key, _all_keys(config), n=1)
  hint = f"did you mean {close[0]}?" if close else "see lensjax/config.py for the keys."
  return InputError(f"unknown config key {key!r}; {hint}")


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
  """A copy of `config` with command-line text values `{"model.num_layers": "4", ...}` applied."""
  values = {}
  for key, text in overrides.items():
    values[key] = _parse_value(key, text, _key_type(config, key))
  return updated(config, values)


def _key_type(config: Config, key: str) -> type:
  parts = key.split(".")
  if len(parts) != 2 or parts[0] not in {f.name for f in dataclasses.fields(config)}:
    raise unknown_key_error(key, config)
  kinds = _field_types(type(getattr(config, parts[0])))
  if parts[1] not in kinds:
    raise unknown_key_error(key, config)
  return kinds[parts[1]]


def updated(config: Config, values: dict[str, Any]) -> Config:
  """A copy of `config` with Python values under dotted keys: `updated(c, {"model.num_layers": 4})`.

  Keys and types are checked as in a config file; `config` itself is frozen and stays as it was.
  """
  nested = to_dict(config)
  for key, value in values.items():
    _key_type(config, key)
    section, name = key.split(".")
    nested[section][name] = value
  return from_dict(nested)


def parse_override_args(args: list[str]) -> dict[str, str]:
  """`["--config.model.num_layers=4"]` -> `{"model.num_layers": "4"}`."""
  overrides = {}
  for arg in args:
    if not arg.startswith("--config.") or "=" not in arg:
      raise InputError(f"unrecognised argument {arg!r}; overrides look like --config.model.num_layers=4.")
    key, value = arg[len("--config."):].split("=", 1)
    overrides[key] = value
  return overrides


def to_dict(config: Config) -> dict:
  return dataclasses.asdict(config)


def from_dict(values: dict) -> Config:
  """Builds a Config from nested dicts, rejecting unknown keys and wrong types."""
  config = Config()
  sections = {}
  for section_name, section_values in values.items():
    if section_name not in {f.name for f in dataclasses.fields(config)}:
      raise unknown_key_error(section_name, config)
    section = getattr(config, section_name)
    kinds = _field_types(type(section))
    checked = {}
    for key, value in section_values.items():
      full = f"{section_name}.{key}"
      if key not in kinds:
        raise unknown_key_error(full, config)
      kind = kinds[key]
      if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"config key {full} expects {kind.__name__}, got {value!r}; fix the config file or pass --config.{full}={_example(kind)}.")
      checked[key] = value
    sections[section_name] = dataclasses.replace(section, **checked)
  return dataclasses.replace(config, **sections)


def save_json(config: Config, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def load_json(path: str) -> Config:
  with open(path) as f:
    return from_dict(json.load(f))
