"""The memory planner: per-component GPU and RAM estimates of a configured run, before any weight is loaded, and
the cheapest changes that make it fit. `estimate` prices weights and adapters, `activations` measures a meta
forward, `budget` assembles a plan, `advice` searches changes, `report` formats and warns. CLI:
`python -m simpletuner_pl.plan`."""
