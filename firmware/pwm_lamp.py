# The street light's lamp on a board (firmware/roles/streetlight.py). Wiring,
# set in /data/node.json:
#   "lamp_pin": GPIO   PWM at 1 kHz into the LED driver's dimming input (a 1-10 V
#                      or PWM dim input, through the driver's isolated interface;
#                      duty 0 switches the driver's output off)
#   "fault_pin": GPIO  optional: the driver's lamp-fail output (open collector,
#                      pulled up here; low = no current through the LEDs). Without
#                      it the lamp is taken to be alight.
import machine
from micropython import const

_FREQ = const(1000)


class PwmLamp:
    def __init__(self, pin, fault_pin=None):
        self._pwm = machine.PWM(machine.Pin(pin), freq=_FREQ, duty_u16=0)
        self._fault = None if fault_pin is None else machine.Pin(fault_pin, machine.Pin.IN, machine.Pin.PULL_UP)

    def set(self, level):  # %
        self._pwm.duty_u16(level * 65535 // 100)

    def ok(self):
        return self._fault is None or self._fault.value() == 1
