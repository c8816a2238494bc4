"""Key rotation (`edgegw keys rotate NODE`, docs/SECURITY.md): the node's next key sent under its current one.

`edgegw keys rotate` writes a `next` key into the keys file (gateway/keystore.py); the gateway reads the
file again when it changes and sends the node the `rekey` command (SPEC.md §3.6) through the command life
cycle (gateway/commands.py: stored, sent once, answered), with the new key wrapped under the current one
(protocols/auth.wrap: the link never carries a key in the clear). While it is under way, the node's frames
are accepted under either key. The rotation ends at the first frame tagged with the new key, or at the
command's success, whichever comes first: the new key becomes the node's key, the old one is still
accepted for keystore.GRACE_S on frames the node built before (its unacknowledged ones are resent as they
were), and frames to the node are tagged with the new key from then on.

A command id is "rekey:<new key's id>:<id of the key it is wrapped under>:<ms since the epoch>" (a ':'
no request from MQTT may use, so no client can take the id first). After a restart the rekey commands
still under way go on (`adopt`: Commands.resumed), and no second one is sent. Before each frame of it is written, the ids
are checked against the keys file (`veto`): if the node's key changed meanwhile (provisioned anew,
revoked, or the rotation ended at a frame under the new key), the frame would be tagged with a key it is
not wrapped under, and the node would unwrap a key nobody has; the command fails instead. And a frame
queued before such a change is dropped when it would be written (`only_under`, gateway/downlink.py).

A rotation whose command fails or expires is said in the log; `edgegw keys rotate NODE` again starts the
next attempt, with the same new key (the node may have taken it even though its answer was lost: then its
next frame ends the rotation anyway).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from protocols.auth import NONCE_LEN, wrap

from .command_book import SUCCEEDED, Command
from .command_request import REKEY
from .keystore import Keystore, KeystoreError, key_id

log = logging.getLogger(__name__)

REKEY_TTL_S = 7 * 86400.0  # a node that is away (a battery swap, a port down) gets its new key when it is back


class Rekeys:
    def __init__(self, keys: Keystore, submit: Callable[[str, str, str, dict[str, Any], float], None]) -> None:
        self._keys = keys
        self._submit = submit  # Commands.submit(node, id, name, args, ttl_s)
        self._sent: dict[str, str] = {}  # node -> the id of its rekey command under way
        self._failed: set[str] = set()  # nodes whose latest attempt failed: the next waits for `keys rotate` again

    def poll(self, file_changed: bool = False) -> None:
        """Send the rekey command to every node with a next key and none under way. file_changed: the keys
        file was written since (a `keys rotate` again retries a failed rotation)."""
        if file_changed:
            self._failed.clear()
        for node, entry in self._keys.entries.items():
            if entry.next is None or entry.revoked is not None:
                self._sent.pop(node, None)
                continue
            if node in self._sent or node in self._failed:
                continue
            # An id of its own each time (the ms since the epoch): a retry after a restart is never taken for an
            # old attempt already final in the command book
            command_id = "%s:%s:%s:%d" % (REKEY, key_id(entry.next), key_id(entry.key), int(time.time() * 1000))
            nonce = os.urandom(NONCE_LEN)
            args = {"nonce": nonce.hex(), "key": wrap(entry.key, nonce, entry.next).hex()}
            self._sent[node] = command_id
            log.info("node %s: sending its new key %s (rotation, command %s)", node, key_id(entry.next), command_id)
            self._submit(node, command_id, REKEY, args, REKEY_TTL_S)

    def next_key_used(self, node: str) -> None:
        """The node tagged a frame with its next key: it has it."""
        self._end(node, "the node uses it")

    def adopt(self, commands: Iterable[Command]) -> None:
        """The rekey commands still under way at a start (Commands.resumed): they go on, no second one is sent."""
        for command in commands:
            if command.name == REKEY and not command.final:
                self._sent[command.node] = command.id

    def only_under(self, command: Command) -> bytes | None:
        """Commands.only_under: a rekey goes out tagged with the key it is wrapped under, or not at all."""
        if command.name != REKEY or self.veto(command) is not None:
            return None
        entry = self._keys.entries.get(command.node)
        return entry.key if entry is not None else None

    def veto(self, command: Command) -> str | None:
        """Commands.vetoes: a rekey goes out only under the key it is wrapped under, while its rotation is on."""
        if command.name != REKEY:
            return None
        parts = command.id.split(":")
        entry = self._keys.entries.get(command.node)
        if len(parts) != 4 or entry is None or entry.revoked is not None:
            return "the node has no key any more"
        if entry.next is None or key_id(entry.next) != parts[1]:
            return "its rotation is over (the node has the key, or another rotation replaced it)"
        if key_id(entry.key) != parts[2]:
            return "the node's key changed since it was wrapped"
        return None

    def finished(self, command: Command) -> None:
        """Commands.on_final: a rekey command ended."""
        if command.name != REKEY:
            return
        entry = self._keys.entries.get(command.node)
        parts = command.id.split(":")
        if command.state != SUCCEEDED and entry is not None and len(parts) == 4 and key_id(entry.key) == parts[1]:
            self._sent.pop(command.node, None)  # the rotation ended at a frame under the new key: nothing failed
            return
        if self._sent.get(command.node) != command.id:
            return
        if command.state == SUCCEEDED:
            self._end(command.node, "the node confirmed it")
            return
        del self._sent[command.node]
        self._failed.add(command.node)
        log.error(
            "node %s: key rotation not done: command %s %s (%s); the node keeps its key; `edgegw keys rotate %s` tries again",
            command.node,
            command.id,
            command.state,
            command.error or "no detail",
            command.node,
        )

    def _end(self, node: str, why: str) -> None:
        try:
            promoted = self._keys.promote(node)
        except (KeystoreError, OSError) as error:  # the next key stays accepted: the next frame tries again
            log.error("node %s: cannot end its key rotation: %s", node, error)
            return
        self._sent.pop(node, None)
        if promoted:
            entry = self._keys.entries.get(node)
            log.info("node %s: key rotated (%s); now key %s", node, why, key_id(entry.key) if entry else "?")
