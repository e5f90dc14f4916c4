"""Rich progress bar that counts optimizer steps towards `train.max_steps`.

Runs are step-bounded (max_epochs=-1), so Lightning's default "Epoch 12/-2" says nothing useful.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        return f"epoch {current_epoch} · step {self.trainer.global_step}/{self.trainer.max_steps}"
