"""The cyclic garbage collector, paused while a CLI run imports its libraries.

Importing torch, Lightning, diffusers and transformers creates about a million objects (1.08 M here) that all live
for the whole run, so every collection the collector starts meanwhile walks a growing heap and frees next to nothing
(a full collection after the imports finds 15.7 k unreachable objects). Pausing it takes those imports from 5.4 s to
3.9 s on the CI machine (experiments/RESULTS.md, "Startup and first run"). Once they are in, the survivors move to
the permanent generation (`gc.freeze`), so later collections skip them and forked dataloader workers do not copy
their pages by writing to their GC headers. The import-time garbage stays frozen with them: 8.4 MB here, where
collecting it first would cost 0.5 s.

Only the CLI pauses (`cli.main`, before Hydra imports): it owns its process. `run(cfg)` from a notebook or a test
never freezes the caller's heap, which may hold a previous run's trainer. The collector resumes before any weights
load, so a reference cycle around a tensor is collected as usual.
"""

from __future__ import annotations

import gc

_paused = False


def pause_collector() -> None:
    """Stop cyclic collection until `resume_collector` (reference counting still frees everything else)."""
    global _paused
    if gc.isenabled() and not _paused:
        gc.disable()
        _paused = True


def resume_collector() -> None:
    """Freeze what the paused stretch created and collect again; a no-op unless `pause_collector` paused it."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False
