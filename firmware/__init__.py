# edgegw node firmware (MicroPython). Imports `protocols`, never `gateway`.
