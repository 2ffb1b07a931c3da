"""Configuration: the dataclasses (schema) and reading them from files and `--set` (load)."""

from lmforge.config.load import (
    all_keys,
    apply_overrides,
    from_dict,
    load_config,
    read_config_file,
    to_dict,
)
from lmforge.config.sampling import SamplingConfig
from lmforge.config.schema import (
    OBJECTIVES,
    DataConfig,
    DistConfig,
    FinetuneConfig,
    LoRAConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    higher_is_better,
    param,
    scheduled,
)

__all__ = [
    "OBJECTIVES",
    "DataConfig",
    "DistConfig",
    "FinetuneConfig",
    "LoRAConfig",
    "ModelConfig",
    "RunConfig",
    "SamplingConfig",
    "TrainConfig",
    "all_keys",
    "apply_overrides",
    "from_dict",
    "higher_is_better",
    "load_config",
    "param",
    "read_config_file",
    "scheduled",
    "to_dict",
]
