"""Hydra composition without the command line: the schema registration both entry points share, and `compose()`."""

from __future__ import annotations

from typing import List, Optional

from simpletuner_pl.paths import asset_dir, config_dir, demo_data_dir


def register() -> None:
    """Make `RunConfig` the schema of `conf/train.yaml` and add the `${demo_data_dir:}` and `${asset_dir:<name>}`
    resolvers (bundled data)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from simpletuner_pl.config.schema import RunConfig

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    OmegaConf.register_new_resolver("demo_data_dir", demo_data_dir, replace=True)
    OmegaConf.register_new_resolver("asset_dir", asset_dir, replace=True)


def compose(overrides: Optional[List[str]] = None):
    """The composed, typed config for `overrides` (same syntax as the command line), without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


def to_typed(cfg):
    """A composed DictConfig (or an already typed RunConfig) as the typed dataclasses, interpolations resolved."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
