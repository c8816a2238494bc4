"""The agent's local control socket: `edgegw status` asks the running agent over a UNIX socket.

One request per connection, one line of text: `status` is answered with the status document (gateway/status.py)
as one line of JSON, then the connection closes. Anything else gets `{"error": ...}`. The socket is the
service's: its mode is 0660 (the service user and its group; a technician in that group may ask, nobody else),
and a socket file left by an agent that died is replaced at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .one_shot import OneShot

log = logging.getLogger(__name__)

MODE = 0o660
REQUEST_MAX = 64  # bytes of a request line
REQUEST_WAIT_S = 5.0  # a client that says nothing (or reads nothing) this long is dropped
CLIENTS = 8  # connections served at once; more are closed at once
MAX_PATH = 107  # sun_path holds 108 bytes with its NUL


class ControlError(Exception):
    """The control socket cannot be made or reached; the message says why and what to do."""


class ControlServer:
    def __init__(self, path: Path, status: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._status = status
        self._connections = OneShot(
            lambda reader: reader.readline(),
            lambda line: self._answer(line[:REQUEST_MAX].strip().decode("ascii", "replace")),
            CLIENTS,
            REQUEST_WAIT_S,
        )

    async def start(self) -> None:
        """Bind the socket (replacing one left by a dead agent; refusing one a live agent answers on)."""
        path = str(self.path)
        if len(os.fsencode(path)) > MAX_PATH:
            raise ControlError("[status] socket: %s is longer than the %d bytes a UNIX socket path may have" % (path, MAX_PATH))
        try:
            if os.path.lexists(path):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise ControlError("[status] socket: %s exists and is not a socket; remove it or choose another path" % path)
                if _answers(path):
                    raise ControlError("[status] socket: another agent is running and answers on %s" % path)
                os.unlink(path)  # left by an agent that was killed
            # Connecting needs write permission on the socket: bound under the usual umask (022) nobody but us may
            # connect until the chmod, so no moment is open to others (and no process-wide umask is changed)
            self._connections.server = await asyncio.start_unix_server(self._connections.serve, path=path, limit=REQUEST_MAX * 2)
            os.chmod(path, MODE)
        except OSError as error:
            raise ControlError("[status] socket: cannot listen on %s: %s" % (path, error.strerror or error)) from None

    async def stop(self) -> None:
        """Best effort and quick: a client that does not read cannot hold the agent's stop."""
        if await self._connections.close():
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _answer(self, request: str) -> bytes:
        if request != "status":
            return json.dumps({"error": "unknown request %r; the one request is: status" % request[:32]}).encode() + b"\n"
        try:
            return json.dumps(self._status(), allow_nan=False).encode() + b"\n"
        except Exception:  # a bug in a reader, or a value JSON cannot hold: said here and to the client, the agent goes on
            log.exception("building the status for the control socket failed")
            return json.dumps({"error": "the agent failed to build its status (see its log)"}).encode() + b"\n"


def _answers(path: str) -> bool:
    """Whether an agent listens there: a refused connection means none; one we may not make means we cannot tell,
    and a socket we cannot tell about is not removed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except PermissionError:
            raise ControlError(
                "[status] socket: %s belongs to another user (an agent of theirs?); remove it or choose another path" % path
            ) from None
        except OSError:
            return False
        return True


def ask(path: Path, request: str = "status", timeout: float = 10.0) -> dict[str, Any]:
    """The agent's answer to one request; ControlError says why there is none, in a technician's words."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(path))
        except FileNotFoundError:
            raise ControlError(
                "no agent is running for this config (no socket %s): start it (systemctl start edgegw, or edgegw run)" % path
            ) from None
        except PermissionError:
            raise ControlError(
                "not allowed to reach the agent's socket %s: run as the service user or add yourself to its group "
                "(sudo usermod -aG edgegw $USER, then log in again)" % path
            ) from None
        except ConnectionRefusedError:
            raise ControlError("the agent is not running (%s is left from one that stopped): start it" % path) from None
        except IsADirectoryError:
            raise ControlError("%s is a folder, not the agent's socket" % path) from None
        except OSError as error:
            raise ControlError("cannot reach the agent at %s: %s" % (path, error.strerror or error)) from None
        try:
            client.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise ControlError("the agent did not answer within %.0f s (is its event loop hung?)" % timeout) from None
        except OSError as error:
            raise ControlError("the agent's socket failed: %s" % (error.strerror or error)) from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the agent's answer is not JSON (%d bytes): is %s an edgegw socket?" % (len(data), path)) from None
    if not isinstance(answer, dict):
        raise ControlError("the agent's answer is not a JSON object")
    if "error" in answer:
        raise ControlError("the agent says: %s" % answer["error"])
    return answer
