"""The CLI imports its libraries with the cyclic collector paused, and collects as usual again before any weights
load and for the whole of training (simpletuner_pl.startup)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.fixture
def collector():
    """Whatever a test pauses or freezes is undone: pytest's own heap must not stay frozen."""
    import simpletuner_pl.startup as startup

    yield startup
    startup._paused = False
    gc.unfreeze()
    gc.enable()


def test_pause_then_resume_freezes_what_was_imported_and_collects_again(collector):
    frozen = gc.get_freeze_count()
    collector.pause_collector()
    assert not gc.isenabled() and collector._paused
    collector.pause_collector()  # a second pause (a multirun's next job) changes nothing
    collector.resume_collector()
    assert gc.isenabled() and not collector._paused
    assert gc.get_freeze_count() > frozen


def test_resume_without_a_pause_leaves_the_heap_alone(collector):
    """`run(cfg)` from a notebook: no freeze of the caller's objects, and a collector the caller turned off stays
    off."""
    frozen = gc.get_freeze_count()
    collector.resume_collector()
    assert gc.get_freeze_count() == frozen and gc.isenabled()
    gc.disable()
    collector.pause_collector()
    collector.resume_collector()
    assert not gc.isenabled() and gc.get_freeze_count() == frozen


PROBE = """
import gc, json, sys
import simpletuner_pl.models.build as build
import simpletuner_pl.train as train

seen = {}
quiet, assemble, fit = train.quiet_libraries, build.assemble_module, train.fit

def on_quiet():
    seen["collecting_while_importing"] = gc.isenabled()
    quiet()

def on_assemble(*args, **kwargs):  # the weights are loaded by now
    seen["collecting_while_loading"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()
    seen["imported_before_loading"] = [name for name in ("lightning.pytorch", "diffusers.models.modeling_utils",
                                       "diffusers.models.autoencoders.autoencoder_kl") if name in sys.modules]
    return assemble(*args, **kwargs)

def on_fit(*args, **kwargs):
    seen["collecting_while_training"] = gc.isenabled()
    return fit(*args, **kwargs)

train.quiet_libraries, build.assemble_module, train.fit = on_quiet, on_assemble, on_fit
sys.argv = ["simpletuner_pl", *sys.argv[1:]]
from simpletuner_pl.cli import main
try:
    main()
finally:
    seen["collecting_at_exit"] = gc.isenabled()
    print("SEEN " + json.dumps(seen))
"""


def test_a_cli_run_imports_paused_and_loads_and_trains_collecting(tmp_path):
    args = ["experiment=demo", "train.max_steps=1", "validation=off", "trainer.accelerator=cpu",
            f"output_dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.split("SEEN ", 1)[1])
    assert seen["collecting_while_importing"] is False
    assert seen["collecting_while_loading"] is True and seen["collecting_while_training"] is True
    assert seen["collecting_at_exit"] is True
    assert len(seen["imported_before_loading"]) == 3, seen
    assert seen["frozen"] > 300_000  # the imported modules' objects, moved out of every later collection
