"""simpletuner_pl: Lightning + Hydra fine-tuning for Flux.1 and SDXL (LoRA, DoRA, full), SimpleTuner's options."""

__version__ = "0.1.0"

__all__ = ["__version__", "compose", "run"]


def __getattr__(name):  # lazy: `import simpletuner_pl` must not pull in torch/diffusers
    if name == "compose":
        from simpletuner_pl.config import compose

        return compose
    if name == "run":
        from simpletuner_pl.train import run

        return run
    raise AttributeError(name)
