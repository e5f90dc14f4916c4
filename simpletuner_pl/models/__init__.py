"""One LightningModule per model family; `build_module` loads the weights and picks the family."""

from __future__ import annotations


def build_module(cfg):
    from simpletuner_pl.models.flux import FluxModule
    from simpletuner_pl.models.loading import DTYPES, load_flux_components

    components = load_flux_components(cfg.model, DTYPES[cfg.quant.base_model_default_dtype])
    return FluxModule(cfg, components)
