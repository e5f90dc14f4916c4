"""The run configuration, at the bottom of the package: typed dataclasses, closed sets and pure checks.

Torch-free and free of every other simpletuner_pl layer, so anything can import it at module level and a bad
value fails in well under a second. `schema` holds the dataclasses (one per `conf/` group), `registries` the closed
sets with their traits, `checks` the cross-option rules, `compose` the Hydra composition.
"""

from simpletuner_pl.config.checks import validate
from simpletuner_pl.config.compose import compose, register, to_typed
from simpletuner_pl.config.data import DataConfig, DatasetConfig, ParquetConfig, TextEmbedsConfig
from simpletuner_pl.config.offload import OffloadConfig
from simpletuner_pl.config.schema import (
                                          AdapterConfig,
                                          ModelConfig,
                                          OptimizerConfig,
                                          QuantConfig,
                                          RunConfig,
                                          TrainConfig,
)
from simpletuner_pl.config.validation import ClipScoreConfig, EvalConfig, EvalLossConfig, ValidationConfig

__all__ = ["AdapterConfig", "ClipScoreConfig", "DataConfig", "DatasetConfig", "EvalConfig", "EvalLossConfig",
           "ModelConfig", "OffloadConfig", "OptimizerConfig", "ParquetConfig", "QuantConfig", "RunConfig",
           "TextEmbedsConfig", "TrainConfig", "ValidationConfig", "compose", "register", "to_typed", "validate"]
