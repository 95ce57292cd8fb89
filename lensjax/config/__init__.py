"""Typed config tree, config files, dotted overrides and validation.

`sections` holds the frozen dataclasses and their typed construction, `files`
loads config files and applies command-line overrides, `validation` checks a
config before anything compiles. Every problem is an `InputError` naming the
key and the fix.
"""

from lensjax.config.ensemble import ensemble_of, member_configs, setting_key
from lensjax.config.files import apply_overrides, load_config_file, load_json, parse_override_args, save_json
from lensjax.config.sections import (CHOICES, STATE_KEYS, CheckpointConfig, Config, DataConfig, LoggingConfig,
                                     ModelConfig, OptimConfig, ParallelConfig, StatsConfig, TrainConfig, from_dict,
                                     resolve, to_dict, unknown_key_error, updated)
from lensjax.config.validation import (MAX_STATIONARY_CONTEXTS, resume_conflicts, stationary_start_problem,
                                       validate)

__all__ = ["apply_overrides", "from_dict", "load_config_file", "load_json", "parse_override_args", "save_json",
           "to_dict", "unknown_key_error", "updated", "CHOICES", "STATE_KEYS", "CheckpointConfig", "Config",
           "DataConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "ParallelConfig", "StatsConfig",
           "TrainConfig", "resolve", "MAX_STATIONARY_CONTEXTS", "resume_conflicts", "stationary_start_problem",
           "validate", "member_configs", "ensemble_of", "setting_key"]
