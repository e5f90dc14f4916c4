"""Memory and speed techniques applied to a loaded denoiser, one module each: gradient checkpointing (with an
interval), torch.compile of the blocks, diffusers group offload, the attention backend, and how to tell that a
component places itself. The model-build recipe (`simpletuner_pl.models.build`) calls them in order; the planner
(`simpletuner_pl.planner`) prices them."""
