# QMC5883L 3-axis magnetometer on I2C (the parking bay's sensor on a board,
# firmware/roles/parking.py): continuous mode at 10 Hz, 8 G range (3,000 counts
# a gauss: 30 a microtesla), 512x oversampling. Wiring in /data/node.json:
# "i2c": [SCL, SDA], the sensor flat under the middle of the bay.
# read() -> the field's magnitude in 0.1 uT, as the role expects.
import math
import struct

from micropython import const

ADDRESS = const(0x0D)
_DATA = const(0x00)  # X, Y, Z: little-endian int16
_CONTROL = const(0x09)
_SET_RESET = const(0x0B)
_MODE = const(0xD1)  # OSR 512, 8 G, 10 Hz, continuous


class QMC5883:
    def __init__(self, i2c, address=ADDRESS):
        self._i2c = i2c
        self._address = address
        self._buffer = bytearray(6)
        i2c.writeto_mem(address, _SET_RESET, b"\x01")  # the datasheet's set/reset period
        i2c.writeto_mem(address, _CONTROL, bytes([_MODE]))

    def read(self):
        self._i2c.readfrom_mem_into(self._address, _DATA, self._buffer)
        x, y, z = struct.unpack("<hhh", self._buffer)
        return int(math.sqrt(x * x + y * y + z * z) / 3 + 0.5)  # counts / 30 per uT, x 10
