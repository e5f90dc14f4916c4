"""The model families, looked up in one place. Adding a family is one entry here plus the family's own files.

A family's files: `<name>_spec.py` (its `FamilySpec`: flavours, sources, option rules; torch-free),
`<name>.py` (its `DiffusionModule`), `loading_<name>.py` (components from a folder or hub id) and `tiny_<name>.py`
(a random-init tiny model for tests). `check_config` applies the rules every family shares (flavour, LoRA
targets, export formats, options that belong to another family) and then the family's own.
"""

from __future__ import annotations

from typing import Dict

from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.flux_spec import FLUX
from simpletuner_pl.models.sdxl_spec import SDXL

FAMILIES: Dict[str, FamilySpec] = {spec.name: spec for spec in (FLUX, SDXL)}


def family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r} is not a valid choice; valid choices: {', '.join(FAMILIES)} "
                          "(pick a model=<group>)")
    return FAMILIES[name]


def _value(cfg: RunConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _default(key: str):
    return _value(RunConfig(), key)


def check_config(cfg: RunConfig) -> FamilySpec:
    """The family's rules for `cfg` (after `simpletuner_pl.config.validate`); returns the family."""
    spec, model, adapter = family(cfg.model.family), cfg.model, cfg.adapter
    if model.flavour not in spec.flavours:
        raise ConfigError(f"model.flavour={model.flavour!r} is not a {spec.name} flavour; valid choices: "
                          f"{', '.join(spec.flavours)} (or pick another model=<group>)")
    target = adapter.target
    if target is not None and target not in spec.targets.presets:
        for other in FAMILIES.values():
            if other is not spec and target in other.targets.presets:
                raise ConfigError(f"adapter.target={target} is a {other.title} preset; for {spec.title} use null "
                                  f"(the default: {spec.targets.default}) or one of its own targets")
        if not spec.targets.free_form:
            raise ConfigError(f"adapter.target={target!r} is not a valid choice; valid choices: "
                              f"{', '.join(spec.targets.presets)}")
    if adapter.export_format not in spec.export_formats:
        raise ConfigError(f"adapter.export_format={adapter.export_format} is not available for {spec.title}; valid "
                          f"choices: {', '.join(spec.export_formats)} (the default, universal, loads exactly in "
                          "diffusers and ComfyUI)")
    foreign = [key for other in FAMILIES.values() if other is not spec for key in other.options
               if key not in spec.options and _value(cfg, key) != _default(key)]
    if foreign:
        owners = ", ".join(o.title for o in FAMILIES.values() if o is not spec and set(o.options) & set(foreign))
        raise ConfigError(f"{', '.join(foreign)}: {owners}-only option(s), which {spec.title} does not read. "
                          f"Remove them or pick that model=<group>.")
    if cfg.tread.routes and not spec.routed_blocks:
        raise ConfigError(f"tread routes image tokens through transformer blocks; {spec.title}'s denoiser has no "
                          "token blocks to route: use tread=off")
    spec.check(cfg)
    return spec
