"""simpletuner_pl: Lightning + Hydra fine-tuning for Flux.1 and SDXL (LoRA, LyCORIS, full), SimpleTuner's options."""

__version__ = "0.1.0"

__all__ = ["compose", "run", "__version__"]


def __getattr__(name):  # lazy: `import simpletuner_pl` must not pull in torch/diffusers
    if name == "compose":
        from simpletuner_pl.cli import compose

        return compose
    if name == "run":
        from simpletuner_pl.train import run

        return run
    raise AttributeError(name)
