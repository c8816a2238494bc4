# LoRa bridge: on the gateway's serial port, a radio that listens on one uplink channel and SF all the
# time and relays what it hears as RADIO_RX, untouched (SPEC.md 5.11): the frame, RSSI, SNR, channel, SF,
# bandwidth and `at`, its uptime in ms when the frame ended. The gateway answers a node through it with
# RADIO_TX, to be sent at `at` (the same clock: a node's receive window) or `delay_ms` after it came.
# Every transmission keeps the EU868 duty cycle (protocols/dutycycle.py): one that would break it, or
# whose time passed, or that finds _QUEUE waiting, is dropped and counted, never sent late or over the
# limit. The bridge is half duplex: while it transmits it hears nothing.
# STATUS `air` carries its airtime, the downlink sub-band's budget for the hour and the counts the
# gateway schedules against.
from micropython import const

from protocols import messages
from protocols.airtime import airtime_us
from protocols.dutycycle import DutyCycle
from protocols.lora import DOWNLINK_FREQ, MAX_RADIO_FRAME

_QUEUE = const(8)
_LATE_MS = const(20)  # a transmission this much past its time would miss the node's window: dropped
_AHEAD_MS = const(10000)  # no window is further ahead than this
_TX_SLACK_MS = const(500)  # past a transmission's airtime without TxDone: the radio is reset


class Bridge:
    CHANNELS = ()
    COMMANDS: dict = {}

    def __init__(self, radio, freq=868100000, sf=9, bw=125000):
        self.radio = radio
        self.freq = freq
        self.sf = sf
        self.bw = bw
        self.duty = DutyCycle(False)  # the hourly rule alone (protocols/dutycycle.py): downlinks go in nodes' windows
        self.queue = []  # [at ms, frame, freq, sf, bw, power], by at
        self.sending = None  # uptime ms the current transmission started
        self.tx_end = 0  # and when its airtime ends
        self.rx = self.tx = self.tx_ms = self.dropped = self.late = self.relayed = 0
        self.listen()

    def listen(self):
        self.radio.configure(self.freq, self.sf, self.bw)
        self.radio.start_receive()

    def read(self):
        return ()

    # -------------------------------------------------------------- the node's loop

    def poll(self, node, now_ms):
        if self.sending is not None:
            late = now_ms > self.tx_end + _TX_SLACK_MS  # no TxDone long after the airtime: the chip is started again
            if late:
                self.dropped += 1
                self.radio.begin()
            elif not self.radio.tx_done():
                return
            self.tx_ms += now_ms - self.sending
            self.sending = None
            self.listen()
        got = self.radio.poll()
        if got is not None:
            self.rx += 1
            frame, rssi, snr = got
            if len(frame) > MAX_RADIO_FRAME or not node.may_send():
                self.dropped += 1  # too long to wrap, or the serial side backed up past its span: the node retransmits
            else:
                fields = {"frame": frame, "rssi": rssi, "snr": snr, "freq": self.freq, "sf": self.sf, "at": now_ms}
                if self.bw != 125000:  # left out at its default: the room is the node's (protocols/lora.py)
                    fields["bw"] = self.bw
                node.send(messages.RADIO_RX, fields)
                self.relayed += 1
        while self.queue and self.queue[0][0] <= now_ms:
            at, frame, freq, sf, bw, power = self.queue.pop(0)
            if now_ms - at > _LATE_MS:
                self.late += 1
                continue
            airtime = airtime_us(len(frame), sf, bw)
            if not self.duty.spend(freq, airtime, now_ms):
                self.dropped += 1
                continue
            self.radio.configure(freq, sf, bw, power_dbm=power, invert_iq=True)  # a downlink: inverted I/Q
            self.radio.send(frame)
            self.tx += 1
            self.sending = now_ms
            self.tx_end = now_ms + (airtime + 999) // 1000
            return

    def next_ms(self, now_ms):
        # How long the node's loop may idle before the next transmission is due.
        if self.sending is not None:
            return 5
        return self.queue[0][0] - now_ms if self.queue else 100

    # -------------------------------------------------------------- the gateway's requests

    def radio_tx(self, node, fields):
        # RADIO_TX: queued for its time. True if queued.
        now = node.hal.uptime_ms()
        at = fields.get("at")
        if at is None:
            at = now + fields.get("delay_ms", 0)
        if at < now - _LATE_MS:
            self.late += 1
            return False
        if at > now + _AHEAD_MS:  # on a clock it no longer has (it rebooted since): would hold a slot for days
            self.dropped += 1
            return False
        if len(self.queue) >= _QUEUE:
            self.dropped += 1
            return False
        entry = [at, fields["frame"], fields["freq"], fields["sf"], fields.get("bw", 125000), fields.get("power", 14)]
        index = len(self.queue)
        while index and self.queue[index - 1][0] > at:
            index -= 1
        self.queue.insert(index, entry)
        return True

    def report(self, now_ms):
        # STATUS `air` (SPEC.md 5.7): what the gateway schedules against
        return {
            "rx": self.rx,
            "crc": self.radio.crc_errors,
            "relayed": self.relayed,
            "tx": self.tx,
            "tx_ms": self.tx_ms,
            "dropped": self.dropped,
            "late": self.late,
            "budget_ms": self.duty.budget_ms(DOWNLINK_FREQ, now_ms),
            "wait_ms": self.duty.wait_ms(DOWNLINK_FREQ, now_ms),
            "sf": self.sf,
            "freq": self.freq,
        }
