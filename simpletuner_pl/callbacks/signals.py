"""SIGTERM and Ctrl-C stop training at the next step boundary, with a checkpoint, and a non-zero exit.

Lightning turns SIGTERM into a `SIGTERMException` raised after the current optimizer step (and, on SLURM with
auto-requeue, saves `hpc_ckpt_N.ckpt` and requeues on the requeue signal). Ctrl-C is routed the same way: the first
one asks for a clean stop, a second one aborts at once. `RunCheckpoint` saves on that exception; `train.run` then
raises `Interrupted`, so the CLI exits 128 + the signal number and a rerun of the same command resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Optional

import lightning as L

log = logging.getLogger(__name__)


class GracefulStop(L.Callback):
    def __init__(self):
        self.received: Optional[signal.Signals] = None
        self.active = False
        self._previous = {}

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        """Before Lightning registers its own handlers, which then call this one after theirs for SIGTERM."""
        if threading.current_thread() is not threading.main_thread():  # signal handlers need the main thread
            return
        self.active = True
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self.active:  # left installed by a restore order we do not control: behave as without us
            if signum == signal.SIGINT:
                signal.signal(signum, signal.default_int_handler)
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            return
        self.received = signal.Signals(signum)
        log.warning("%s received: stopping after this step and saving a checkpoint%s", self.received.name,
                    " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else "")
        if signum == signal.SIGINT:
            handler = signal.getsignal(signal.SIGTERM)  # Lightning's: it sets the flag its loops check
            if callable(handler):
                handler(signal.SIGTERM, frame)

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self.active = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
