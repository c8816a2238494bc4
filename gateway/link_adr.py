"""Link adaptation: the SF and TX power the gateway advises each radio node (SPEC.md §5.11, "Link adaptation").

LoRaWAN's ADR is the model. Per node the gateway keeps the best SNR (over the bridges that heard it) of each of
its last ADR_FRAMES counters, all sent at one setting. Once ADR_FIRST are known (after an advice it took:
ADR_FRAMES at its new setting, so advice does not swing with every frame) it works out, from the best of them
brought to MAX_POWER_DBM, the lowest SF a bridge of this gateway listens on, not above the node's, that leaves
MARGIN_DB, then the lowest power in POWER_STEP_DB steps that still leaves it (`advise`). A setting other than the node's goes to it as a
CONFIG set {"sf", "tx_power", "margin_db"}: one of the gateway's own commands (gateway/commands.py: stored,
sent in the node's receive windows, resent until answered), one at a time per node.

What the gateway believes of a node's setting: its SF from every frame (RADIO_RX `sf`), its power from STATUS
`air.power` and CONFIG reports (`tx_power`), and from an advice the node answered without errors; unknown power
counts as MAX_POWER_DBM (it can only make the advice more careful). A frame at another SF than believed, or
STATUS saying another power, means the node changed by itself (an operator's config/set, a fallback, lost
flash): the SNRs kept (sent at the old setting) are dropped. A node that fell back (STATUS `air.fallback` rose:
32 uplinks with nothing heard at the advised setting) is not advised that SF again while this gateway runs:
no bridge in range of it listens there, and advising it again would lose the node for 32 uplinks each time.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protocols.lora import (
    ADR_FIRST,
    ADR_FRAMES,
    MARGIN_DB,
    MAX_POWER_DBM,
    MIN_POWER_DBM,
    POWER_STEP_DB,
    SF_MAX,
    SF_MIN,
    SNR_FLOOR_DB10,
)

from .command_book import EXPIRED, SUCCEEDED, Command
from .command_request import CONFIG

log = logging.getLogger(__name__)

ADR = "adr"  # the prefix of the ids of its commands: "adr:<ms since the epoch>" (a ':' no MQTT request may use)
ADR_TTL_S = 86400.0  # a node heard less than once a day gets a fresh advice from fresh frames instead


SNR_LIMIT_DB = 50  # a LoRa SNR is within this of 0 dB; a bridge that says more is broken


@dataclass(frozen=True)
class Advice:
    sf: int
    power: int  # dBm
    margin_db: int  # the margin the node has at this setting: dB, rounded down


def snr10(snr: float) -> int:
    """A bridge's SNR (dB, quarter-dB steps) in tenths of a dB, rounded down: the arithmetic below is in integers."""
    return math.floor(snr * 10)


def advise(snrs: Iterable[int], power: int, listened: Iterable[int], floor: int = MIN_POWER_DBM) -> Advice | None:
    """The setting for a node whose frames were heard with these SNRs (tenths of a dB, snr10) while it sent at
    `power` dBm, by bridges that listen on the SFs `listened`, never below `floor` dBm; None when there is
    nothing to go on."""
    sfs = sorted({sf for sf in listened if SF_MIN <= sf <= SF_MAX})
    heard = list(snrs)
    if not heard or not sfs:
        return None
    best = max(heard) + 10 * (MAX_POWER_DBM - power)  # the best frame, had it been sent at full power

    def margin10(sf: int, dbm: int) -> int:
        return best - 10 * (MAX_POWER_DBM - dbm) - SNR_FLOOR_DB10[sf - SF_MIN]

    sf = next((sf for sf in sfs if margin10(sf, MAX_POWER_DBM) >= 10 * MARGIN_DB), sfs[-1])
    dbm = MAX_POWER_DBM
    while dbm - POWER_STEP_DB >= max(MIN_POWER_DBM, floor) and margin10(sf, dbm - POWER_STEP_DB) >= 10 * MARGIN_DB:
        dbm -= POWER_STEP_DB
    return Advice(sf, dbm, margin10(sf, dbm) // 10)  # // rounds down, as C's floor of a negative does not


@dataclass
class _Node:
    snrs: OrderedDict[int, int] = field(default_factory=OrderedDict)  # counter -> best snr10, oldest heard first
    sf: int | None = None  # the SF it sends at, as believed
    power: int | None = None  # dBm; None: not known (MAX_POWER_DBM is assumed)
    advised: bool = False  # it took an advice: the next waits for ADR_FRAMES frames at that setting
    advised_sf: int | None = None  # the SF of the advice it took last
    advised_power: int | None = None  # ... and its power
    outstanding: tuple[str, Advice] | None = None  # the command id of the advice under way
    fallbacks: int | None = None  # STATUS air.fallback last seen
    excluded: set[int] = field(default_factory=set)  # SFs it fell back from: not advised again
    floor: int = MIN_POWER_DBM  # dBm: a power it fell back from at its own SF, and all below it, not advised again
    refused: bool = False  # it refused the keys (a node without link adaptation): not advised again


class LinkAdaptation:
    """The gateway's side of link adaptation, fed by gateway/sessions.py. `submit` is Commands.submit (wired by
    the agent); without it (tools, tests of the sessions alone) the advice is worked out for the status only."""

    def __init__(self, bridge_sfs: Callable[[], set[int]]) -> None:
        self._bridge_sfs = bridge_sfs  # the SFs the bridges with a link listen on
        self.submit: Callable[[str, str, str, dict[str, Any], float], None] | None = None
        self._nodes: dict[str, _Node] = {}

    def _node(self, node: str) -> _Node:
        state = self._nodes.get(node)
        if state is None:
            state = self._nodes[node] = _Node()
        return state

    # ------------------------------------------------------------ what the sessions tell it

    def heard(self, node: str, counter: int, snr: Any, sf: int) -> None:
        """A copy of the node's authentic frame `counter`, heard by a bridge at this SNR (dB) and SF."""
        if not isinstance(snr, (int, float)) or isinstance(snr, bool) or not -SNR_LIMIT_DB <= snr <= SNR_LIMIT_DB:
            return  # not a LoRa SNR (a broken or hostile bridge): nothing to decide on
        state = self._node(node)
        if state.outstanding is not None:
            return  # the node may have taken the advice already: not known at which setting this came
        if state.sf != sf:
            if state.sf is not None:  # it changed by itself: its power with it, maybe (a fallback goes to full)
                state.power = None
            state.sf = sf
            state.snrs.clear()
        value = snr10(snr)
        state.snrs[counter] = max(value, state.snrs.get(counter, value))
        while len(state.snrs) > ADR_FRAMES:
            state.snrs.popitem(last=False)
        self._decide(node, state)

    def status(self, node: str, air: dict[str, Any]) -> None:
        """The node's STATUS `air` (integers only): its power, and whether it fell back."""
        state = self._node(node)
        fallbacks = air.get("fallback")
        if isinstance(fallbacks, int):
            if state.fallbacks is not None and fallbacks > state.fallbacks:
                self._fell_back(node, state, air.get("sf"))
            state.fallbacks = fallbacks
        power = air.get("power")
        valid = isinstance(power, int) and MIN_POWER_DBM <= power <= MAX_POWER_DBM
        if valid and state.outstanding is None and power != state.power:
            state.power = power
            state.snrs.clear()

    def reported(self, node: str, values: dict[str, Any]) -> None:
        """A CONFIG report's values: what the node now uses (an operator may have set them too)."""
        state = self._node(node)
        if state.outstanding is not None:
            return  # the answer to our advice says it too: finished() takes it
        sf, power = values.get("sf"), values.get("tx_power")
        if isinstance(power, int) and power != state.power:
            state.power = power
            state.snrs.clear()
        if isinstance(sf, int) and sf != state.sf:
            state.sf = sf
            state.snrs.clear()

    def finished(self, command: Command) -> None:
        """Commands.on_final: an advice answered, failed or expired."""
        state = self._nodes.get(command.node)
        if state is None or state.outstanding is None or state.outstanding[0] != command.id:
            return
        advice = state.outstanding[1]
        state.outstanding = None
        state.snrs.clear()  # sent before the node took it, or at a setting no longer known
        state.advised = True  # whatever came of it: the next waits for ADR_FRAMES frames
        if command.state == SUCCEEDED:
            state.sf, state.power, state.advised_sf, state.advised_power = advice.sf, advice.power, advice.sf, advice.power
        elif command.state == EXPIRED:
            state.power = None  # it may have taken it and lost the answer: its next STATUS says
        else:  # the node refused the keys: a node without link adaptation (or the command was not stored)
            state.refused = command.error is not None and "not stored" not in command.error
            log.info("node %s: link advice %s: %s", command.node, command.state, command.error)

    def adopt(self, commands: Iterable[Command]) -> None:
        """The advice still under way at a start (Commands.resumed): it goes on, no second one is sent."""
        for command in commands:
            if command.id.startswith(ADR + ":") and not command.final:
                args = command.args
                advice = Advice(args.get("sf", 0), args.get("tx_power", 0), args.get("margin_db", 0))
                self._node(command.node).outstanding = (command.id, advice)

    def summary(self, node: str) -> dict[str, Any]:
        """For the node's status `radio`: the setting the gateway advises on what it has heard (sent or not)."""
        state = self._nodes.get(node)
        if state is None:
            return {}
        advice = advise(state.snrs.values(), self._power(state), self._listened(state), state.floor)
        if advice is None:
            return {}
        return {"advised_sf": advice.sf, "advised_power": advice.power}

    # ------------------------------------------------------------ deciding

    def _power(self, state: _Node) -> int:
        return state.power if state.power is not None else MAX_POWER_DBM

    def _listened(self, state: _Node) -> set[int]:
        """The SFs it may be advised: a bridge listens there, it did not fall back from there, and none above the
        SF it sends at (LoRaWAN's ADR never lowers a data rate: a link short of margin is advised full power, and the
        node's own fallback raises its SF if nothing reaches it). Advising up to keep MARGIN_DB where the link
        delivers crowded the slowest channel: tree-health's probes, installed 3 dB above sensitivity, went to SF12
        by the dozen and drowned it (docs/HIL.md)."""
        return {sf for sf in self._bridge_sfs() - state.excluded if state.sf is None or sf <= state.sf}

    def _decide(self, node: str, state: _Node) -> None:
        if self.submit is None or state.refused or len(state.snrs) < (ADR_FRAMES if state.advised else ADR_FIRST):
            return
        power = self._power(state)
        advice = advise(state.snrs.values(), power, self._listened(state), state.floor)
        if advice is None or (advice.sf, advice.power) == (state.sf, power):
            return
        command_id = "%s:%d" % (ADR, int(time.time() * 1000))
        state.outstanding = (command_id, advice)
        args = {"sf": advice.sf, "tx_power": advice.power, "margin_db": advice.margin_db}
        log.info(
            "node %s: advised SF%d at %d dBm (%d dB of margin; was SF%s at %d dBm)",
            node,
            advice.sf,
            advice.power,
            advice.margin_db,
            state.sf,
            power,
        )
        self.submit(node, command_id, CONFIG, args, ADR_TTL_S)

    def _fell_back(self, node: str, state: _Node, own_sf: Any) -> None:
        # The STATUS says the SF it went back to: the advised one, if another, is one no bridge in range of the
        # node listens on (if the same, the power was not enough: the next advice starts from full power)
        # An advice still under way when the STATUS came (its answer lost in the silent uplinks) is what it fell from
        taken = state.outstanding[1] if state.outstanding is not None else None
        advised = taken.sf if taken is not None else state.advised_sf
        if advised is not None and advised != own_sf:
            state.excluded.add(advised)
            log.warning("node %s fell back from SF%d (nothing heard in its windows): not advised it again", node, advised)
        elif advised is not None:  # the power was not enough at its own SF: that power and less are not advised again
            power = taken.power if taken is not None else state.advised_power
            if power is not None:
                state.floor = max(state.floor, min(MAX_POWER_DBM, power + POWER_STEP_DB))
                log.warning("node %s fell back from %d dBm at SF%d: not advised under %d dBm again", node, power, advised, state.floor)
        state.advised, state.advised_sf = True, None  # the next advice waits for ADR_FRAMES frames at full power
        state.power = None
        state.snrs.clear()
