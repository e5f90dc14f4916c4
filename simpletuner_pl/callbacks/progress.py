"""Rich progress bar that counts optimizer steps towards `train.max_steps`.

Runs are step-bounded (max_epochs=-1), so Lightning's default "Epoch 12/-2" says nothing useful. Lightning writes
the description once per epoch; here it follows every refresh, so an epoch of 10k images does not show "step 0"
for its whole length, and the last step reads `step N/N`. The startup work before the first step has its own bars
(`simpletuner_pl.progress`).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        return f"epoch {current_epoch} · step {self.trainer.global_step}/{self.trainer.max_steps}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
