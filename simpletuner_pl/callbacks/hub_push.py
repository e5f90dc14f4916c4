"""`hub.push=true`: the finished run goes to the Hub (`simpletuner_pl.hub.push`), from rank 0.

It runs in `on_fit_end`, after every `on_train_end` (the final adapter export, the model card, the last
checkpoint), so a failed upload loses nothing: the error says the run is complete on disk and how to upload it by
hand. A run stopped early (a signal, a crash) is not pushed.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from simpletuner_pl.config.hub import HubConfig
from simpletuner_pl.errors import UserError
from simpletuner_pl.hub import push


class HubPush(L.Callback):
    def __init__(self, hub: HubConfig, output_dir: Path):
        self.hub, self.output_dir = hub, Path(output_dir)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        try:
            push(self.output_dir, self.hub, message=f"simpletuner_pl: {trainer.global_step} steps")
        except Exception as err:
            private = " --private" if self.hub.private else ""
            raise UserError(f"training finished and is saved in {self.output_dir}, but the upload to "
                            f"{self.hub.repo_id} failed ({type(err).__name__}: {err}); upload it by hand with "
                            f"`hf upload {self.hub.repo_id} {self.output_dir / 'adapter'} . --exclude 'step_*' "
                            f"--exclude 'best/*'{private}`") from err
