"""Config files, dotted overrides and the JSON form, with every key and type checked.

A config file `configs/NAME.py` defines `get_config() -> Config`. Overrides on
the command line use dotted paths: `--config.model.num_layers=4`; in Python,
`config.updated({"model.num_layers": 4})`. A wrong key or type is an
`InputError` naming the key and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from lensjax.config.sections import (Config, _example, _is_tuple, _key_type, _type_name, checked_value, from_dict,
                                     to_dict, updated)
from lensjax.errors import InputError


def packaged_configs() -> dict[str, str]:
  """{name: path} of the configs that come with lensjax: `lensjax.configs` of an installed package (the
  repository's configs/, shipped inside it), or configs/ beside the package in a checkout."""
  folders = []
  spec = importlib.util.find_spec("lensjax.configs")
  if spec is not None:
    folders += list(spec.submodule_search_locations or [])
  folders.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs"))
  found = {}
  for folder in folders:
    if os.path.isdir(folder):
      for name in sorted(os.listdir(folder)):
        if name.endswith(".py") and not name.startswith("_"):
          found.setdefault(name[:-3], os.path.join(folder, name))
  return found


def load_config_file(path: str) -> Config:
  """Runs `get_config()` of a config file, or of a packaged config named without a folder or suffix
  (`quickstart`), or reads a run's resolved `config.json`."""
  if not os.path.isfile(path):
    packaged = packaged_configs()
    if path in packaged:
      path = packaged[path]
    else:
      raise InputError(f"config file {path!r} does not exist; pass a file such as configs/quickstart.py or the "
                       f"name of a config that comes with lensjax ({', '.join(packaged) or 'none found'}).")
  if path.endswith(".json"):
    try:
      return load_json(path)
    except ValueError as e:  # not JSON (InputError, a wrong key or type, is raised as it is)
      raise InputError(f"config file {path!r} is not valid JSON ({e}); pass a run's config.json or a .py file.") from e
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
    if _is_tuple(kind):
      return checked_value(key, json.loads(text), kind)
    return text
  except ValueError:
    raise InputError(f"config key {key} expects {_type_name(kind)}, got {text!r}; pass e.g. "
                     f"--config.{key}={_example(kind)}.") from None


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
  """A copy of `config` with command-line text values `{"model.num_layers": "4", ...}` applied."""
  values = {}
  for key, text in overrides.items():
    values[key] = _parse_value(key, text, _key_type(config, key))
  return updated(config, values)


def parse_override_args(args: list[str]) -> dict[str, str]:
  """`["--config.model.num_layers=4"]` -> `{"model.num_layers": "4"}`."""
  overrides = {}
  for arg in args:
    if not arg.startswith("--config.") or "=" not in arg:
      raise InputError(f"unrecognised argument {arg!r}; overrides look like --config.model.num_layers=4.")
    key, value = arg[len("--config."):].split("=", 1)
    overrides[key] = value
  return overrides


def save_json(config: Config, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def load_json(path: str) -> Config:
  with open(path) as f:
    return from_dict(json.load(f))
