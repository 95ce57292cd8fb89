"""Config: dotted overrides, JSON round trip, and what they reject."""

from __future__ import annotations

import pytest

from conftest import make_tiny_config
from lensjax import cli
from lensjax import config as config_lib
from lensjax.config import Config
from lensjax.errors import InputError


@pytest.mark.parametrize("key,text,value", [
    ("model.num_layers", "4", 4),
    ("model.num_layers", "0x10", 16),
    ("train.steps", "1e3", 1000),  # scientific notation for whole numbers
    ("optim.lr", "3e-4", 3e-4),
    ("optim.lr", "1", 1.0),
    ("model.use_bias", "false", False),
    ("model.use_bias", "True", True),
    ("model.tie_embeddings", "0", False),
    ("model.activation", "gelu", "gelu"),
    ("data.path", "/data/a=b.txt", "/data/a=b.txt"),
])
def test_overrides_parse_to_the_field_type(key, text, value):
  config = config_lib.apply_overrides(Config(), config_lib.parse_override_args([f"--config.{key}={text}"]))
  section, name = key.split(".")
  got = getattr(getattr(config, section), name)
  assert got == value and type(got) is type(value)


def test_overrides_return_a_copy():
  original = Config()
  changed = config_lib.apply_overrides(original, {"model.num_layers": "7"})
  assert changed.model.num_layers == 7 and original.model.num_layers == Config().model.num_layers


@pytest.mark.parametrize("key,text,named", [
    ("model.num_layers", "four", "model.num_layers"),
    ("model.num_layers", "1.5", "model.num_layers"),
    ("model.use_bias", "maybe", "model.use_bias"),
    ("optim.lr", "fast", "optim.lr"),
    ("model.num_layer", "4", "did you mean model.num_layers"),
    ("nosuchsection.x", "1", "nosuchsection.x"),
    ("model", "1", "'model'"),
])
def test_bad_overrides_raise_input_errors_naming_the_key(key, text, named):
  with pytest.raises(InputError, match=named):
    config_lib.apply_overrides(Config(), {key: text})


@pytest.mark.parametrize("arg", ["--config.model.num_layers", "model.num_layers=4", "--model.num_layers=4"])
def test_malformed_override_arguments_are_rejected(arg):
  with pytest.raises(InputError, match="unrecognised argument"):
    config_lib.parse_override_args([arg])


def test_config_json_round_trips(tmp_path):
  config = make_tiny_config(**{"model.activation": "swiglu", "optim.lr": 2.5e-4, "model.use_bias": False,
                               "data.path": "some/file.txt"})
  path = str(tmp_path / "config.json")
  config_lib.save_json(config, path)
  assert config_lib.load_json(path) == config
  assert config_lib.load_json(path) != Config()  # the comparison can fail


def test_from_dict_rejects_unknown_keys_and_wrong_types():
  with pytest.raises(InputError, match="model.num_layerz"):
    config_lib.from_dict({"model": {"num_layerz": 2}})
  with pytest.raises(InputError, match="model.num_layers"):
    config_lib.from_dict({"model": {"num_layers": "2"}})
  with pytest.raises(InputError, match="model.use_bias"):
    config_lib.from_dict({"model": {"use_bias": 1}})
  # An int where a float is expected is fine (JSON writes 1.0 as 1 in some tools).
  assert config_lib.from_dict({"optim": {"lr": 1}}).optim.lr == 1.0


def test_train_help_lists_every_config_key_with_its_default_and_a_meaning(capsys):
  from lensjax.config.reference import key_reference
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  text = capsys.readouterr().out
  rows = key_reference()
  flat = {f"{section}.{name}" for section, values in config_lib.to_dict(config_lib.Config()).items()
          for name in values}
  assert {key for key, _, _ in rows} == flat
  for key, default, meaning in rows:
    assert meaning, f"{key} has no comment on its line in lensjax/config/sections.py"
    assert f"{key}={default}" in text and meaning in text, key
  # The defaults are written as overrides take them back.
  parsed = config_lib.apply_overrides(config_lib.Config(), {key: default.strip('"') for key, default, _ in rows})
  assert parsed == config_lib.Config()
