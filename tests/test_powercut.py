"""Power cuts under the real gateway: every reading ever acknowledged to a node reaches the subscriber.

The gateway's data_dir is on hil/powercut.py's emulated disk, which loses whatever was not
fsynced; see hil/powercut_trial.py. EDGEGW_POWERCUTS sets the number of cuts (`make soak`: 1,000),
EDGEGW_POWERCUT_SEED replays a run.
"""

from __future__ import annotations

import os
import pathlib
import random

import pytest

from hil.broker import Mosquitto
from hil.powercut import PowerCutDisk
from hil.powercut_trial import PowerCutTrial

CUTS = int(os.environ.get("EDGEGW_POWERCUTS", "50"))


def test_every_acknowledged_reading_survives_power_cuts(tmp_path: pathlib.Path, hil_broker: Mosquitto) -> None:
    why = PowerCutDisk.unavailable()
    if why:
        pytest.fail("the power-cut file system cannot run here: %s" % why)
    seed = int(os.environ.get("EDGEGW_POWERCUT_SEED") or random.SystemRandom().randrange(1, 1 << 31))
    print("power-cut trial: seed %d (EDGEGW_POWERCUT_SEED=%d replays it), %d cuts" % (seed, seed, CUTS))
    trial = PowerCutTrial(tmp_path, hil_broker, seed=seed)
    try:
        result = trial.run(CUTS)
        print(trial.report())
        assert sum(len(numbers) for numbers in result.acked.values()) > 0, "no reading was ever acknowledged: %s" % result.summary()
        if result.missing():
            pytest.fail(
                "readings acknowledged to nodes and lost (EDGEGW_POWERCUT_SEED=%d replays it):\n%s" % (seed, trial.report()), pytrace=False
            )
    finally:
        trial.close()
