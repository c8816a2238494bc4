# Bosch BME280 temperature / humidity / pressure over I2C (datasheet rev 1.6,
# section 4.2.3 integer compensation). Works with machine.I2C and with the
# emulated chip of the unix HAL (firmware/emulation.py).
import struct
import time

from micropython import const

ADDRESS = const(0x76)
_REG_CALIB_TP = const(0x88)  # 24 bytes: dig_T1..dig_P9
_REG_CALIB_H1 = const(0xA1)
_REG_CALIB_H2 = const(0xE1)  # 7 bytes: dig_H2..dig_H6
_REG_ID = const(0xD0)
_REG_CTRL_HUM = const(0xF2)
_REG_CTRL_MEAS = const(0xF4)
_REG_STATUS = const(0xF3)  # bit 3: measuring
_REG_DATA = const(0xF7)  # 8 bytes: press[3] temp[3] hum[2]
CHIP_ID = const(0x60)


class BME280:
    # A channel source (see firmware/sensors.py). The chip is looked for on
    # every read until found, so a sensor missing at boot (or a BMP280 fitted
    # by mistake) costs its channels, not the node.
    CHANNELS = (("temperature", "Cel", -2), ("humidity", "%RH", -2), ("pressure", "Pa", 0))

    def __init__(self, i2c, address=ADDRESS):
        self._i2c = i2c
        self._address = address
        self._t = None  # calibration: read once the chip answers

    def _find(self):
        i2c = self._i2c
        address = self._address
        if i2c.readfrom_mem(address, _REG_ID, 1)[0] != CHIP_ID:
            raise OSError("no BME280 at 0x%02x" % address)
        tp = i2c.readfrom_mem(address, _REG_CALIB_TP, 24)
        self._t = struct.unpack("<Hhh", tp[0:6])
        self._p = struct.unpack("<Hhhhhhhhh", tp[6:24])
        h1 = i2c.readfrom_mem(address, _REG_CALIB_H1, 1)[0]
        h = i2c.readfrom_mem(address, _REG_CALIB_H2, 7)
        h4 = (h[3] << 4) | (h[4] & 0x0F)
        h5 = (h[5] << 4) | (h[4] >> 4)
        self._h = (
            h1,
            struct.unpack("<h", h[0:2])[0],
            h[2],
            h4 - 4096 if h4 > 2047 else h4,
            h5 - 4096 if h5 > 2047 else h5,
            struct.unpack("b", h[6:7])[0],
        )
        i2c.writeto_mem(address, _REG_CTRL_HUM, b"\x01")  # humidity oversampling x1
        self._buf = bytearray(8)

    def read(self):
        # One forced measurement: (centi-degC, centi-%RH, Pa) as integers.
        if self._t is None:
            self._find()  # OSError while the chip is absent: the node skips these channels
        self._i2c.writeto_mem(self._address, _REG_CTRL_MEAS, b"\x25")  # T x1, P x1, forced mode
        for _ in range(20):  # a conversion takes about 9.3 ms at x1 oversampling (datasheet 9.1)
            if not self._i2c.readfrom_mem(self._address, _REG_STATUS, 1)[0] & 0x08:
                break
            time.sleep_ms(1)
        self._i2c.readfrom_mem_into(self._address, _REG_DATA, self._buf)
        b = self._buf
        adc_p = (b[0] << 12) | (b[1] << 4) | (b[2] >> 4)
        adc_t = (b[3] << 12) | (b[4] << 4) | (b[5] >> 4)
        adc_h = (b[6] << 8) | b[7]
        t_fine, temperature = compensate_t(self._t, adc_t)
        return temperature, compensate_h(self._h, t_fine, adc_h) * 100 // 1024, compensate_p(self._p, t_fine, adc_p)


def compensate_t(cal, adc_t):
    t1, t2, t3 = cal
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    t_fine = var1 + var2
    return t_fine, (t_fine * 5 + 128) >> 8  # centi-degC


def compensate_p(cal, t_fine, adc_p):
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal
    var1 = (t_fine >> 1) - 64000
    var2 = (((var1 >> 2) * (var1 >> 2)) >> 11) * p6
    var2 = var2 + ((var1 * p5) << 1)
    var2 = (var2 >> 2) + (p4 << 16)
    var1 = (((p3 * (((var1 >> 2) * (var1 >> 2)) >> 13)) >> 3) + ((p2 * var1) >> 1)) >> 18
    var1 = ((32768 + var1) * p1) >> 15
    if var1 == 0:
        return 0
    p = ((1048576 - adc_p) - (var2 >> 12)) * 3125
    p = (p << 1) // var1 if p < 0x80000000 else (p // var1) * 2
    var1 = (p9 * (((p >> 3) * (p >> 3)) >> 13)) >> 12
    var2 = ((p >> 2) * p8) >> 13
    return p + ((var1 + var2 + p7) >> 4)  # Pa


def compensate_h(cal, t_fine, adc_h):
    h1, h2, h3, h4, h5, h6 = cal
    v = t_fine - 76800
    v = ((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15) * (
        ((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    v = 0 if v < 0 else v
    v = 419430400 if v > 419430400 else v
    return v >> 12  # %RH * 1024
