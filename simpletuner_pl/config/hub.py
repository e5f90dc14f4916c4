"""`hub.*`: push the trained adapter, its model card and sample validation images to the Hugging Face Hub.

The upload runs once training has finished, on rank 0 (`simpletuner_pl.hub.push`); whether it can succeed (a repo
id, the network, a token with write access) is checked at startup (`simpletuner_pl.hub.check_push`), so a run
never trains for hours to fail at the last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class HubConfig:
    push: bool = False  # SimpleTuner's push_to_hub
    repo_id: Optional[str] = None  # "user/name" or "org/name" (SimpleTuner's hub_model_id); created if missing
    private: bool = True  # a new repo is private unless hub.private=false; an existing repo keeps its visibility
