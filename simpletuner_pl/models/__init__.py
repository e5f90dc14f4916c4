"""One LightningModule per model family; `build_module` loads the weights and picks the family."""

from __future__ import annotations


def build_module(cfg):
    from simpletuner_pl.models.loading import DTYPES

    from simpletuner_pl.memory.options import configure_components
    from simpletuner_pl.quantization import load_quantized_transformer, quantize_components

    dtype = DTYPES[cfg.quant.base_model_default_dtype]
    if cfg.model.family == "sdxl":
        from simpletuner_pl.models.loading_sdxl import load_sdxl_components
        from simpletuner_pl.models.sdxl import SDXLModule

        components = load_sdxl_components(cfg.model, dtype)
        quantize_components(cfg, components, "unet")
        configure_components(cfg, components, "unet")
        return SDXLModule(cfg, components)

    from simpletuner_pl.models.flux import FluxModule
    from simpletuner_pl.models.loading import load_flux_components

    # A quantised transformer is streamed from disk block by block: peak RAM ~ its quantised size, not a bf16 copy.
    components = load_flux_components(cfg.model, dtype, transformer=load_quantized_transformer(cfg, dtype))
    quantize_components(cfg, components, "transformer")  # in place: tiny model, text encoders
    configure_components(cfg, components, "transformer")
    return FluxModule(cfg, components)
