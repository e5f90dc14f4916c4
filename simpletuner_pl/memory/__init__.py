"""Memory: `offload.*` settings and option checks (`config`), applying them to components (`options`,
`placement`), and the memory planner (`estimate`, `plan`; CLI `python -m simpletuner_pl.plan`)."""
