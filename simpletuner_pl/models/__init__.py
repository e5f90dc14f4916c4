"""One LightningModule per model family; `build_module` loads the weights and picks the family."""

from __future__ import annotations


def build_module(cfg):
    from simpletuner_pl.models.loading import DTYPES

    dtype = DTYPES[cfg.quant.base_model_default_dtype]
    if cfg.model.family == "sdxl":
        from simpletuner_pl.models.loading_sdxl import load_sdxl_components
        from simpletuner_pl.models.sdxl import SDXLModule

        return SDXLModule(cfg, load_sdxl_components(cfg.model, dtype))

    from simpletuner_pl.models.flux import FluxModule
    from simpletuner_pl.models.loading import load_flux_components

    return FluxModule(cfg, load_flux_components(cfg.model, dtype))
