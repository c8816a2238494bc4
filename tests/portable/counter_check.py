# Runs on MicroPython (tests/test_firmware.py): the frame counter against a flash whose writes
# sometimes fail (a MemoryError while writing, as on a full heap) and whose records get damaged
# between boots. A value handed out twice would let the gateway take new frames for old ones.
from firmware.storage import PersistentCounter


class Flash:
    def __init__(self):
        self.records = {}
        self.writes = 0
        self.failed = 0

    def get(self, key):
        return self.records.get(key)

    def put(self, key, value):
        self.writes += 1
        if self.writes % 3 == 0:  # every third write fails before it reaches the flash
            self.failed += 1
            raise MemoryError("emulated")
        self.records[key] = value


handed = set()
flash = Flash()
counter = PersistentCounter(flash)
for round_ in range(40):
    for _ in range(50):
        try:
            value = counter.take()
        except MemoryError:
            continue
        assert value not in handed, ("reused", value)
        handed.add(value)
    # a reboot, every third one with one of the two records damaged
    if round_ % 3 == 1:
        key = "counter" if round_ % 2 else "counter.2"
        flash.records[key] = b"garbage"
    counter = PersistentCounter(flash)
print("ok", len(handed), max(handed), flash.failed)
