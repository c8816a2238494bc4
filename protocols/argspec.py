"""Command argument specs (SPEC.md §5.9): what a node's HELLO says each of its commands takes.

A spec is space-separated `name kind` pairs in the language of messages.SCHEMAS:
"level u0-100! fade_s u0-600" is a required integer 0-100 and an optional one 0-600.
The gateway checks a command against it before the command goes on the wire; a node
checks what arrives with the same code. Its own module: a node that offers no
commands never imports it.
"""

from .errors import E_SCHEMA, ProtocolError
from .messages import _check_value


def rows(spec: str) -> list:
    """[(name, kind, required), ...] of a command's argument spec (SPEC.md §5.9): "level u0-100! fade_s u0-600"."""
    words = spec.split()
    if len(words) % 2:
        raise ProtocolError(E_SCHEMA, "argument spec is not name/kind pairs")
    out = []
    for index in range(0, len(words), 2):
        kind = words[index + 1]
        required = kind[-1] == "!"
        if required:
            kind = kind[:-1]
        bounds = kind[1:].split("-")
        if not kind or kind[0] not in "uintbam*" or (len(kind) > 1 and (len(bounds) != 2 or not (bounds[0] + bounds[1]).isdigit())):
            raise ProtocolError(E_SCHEMA, "argument %s has no valid kind" % words[index])
        out.append((words[index], kind, required))
    return out


def check(command: str, spec: str, args: dict) -> None:
    """Raise a schema ProtocolError whose detail names the argument if args do not match the spec."""
    specs = rows(spec)
    names = [row[0] for row in specs]
    for key in args:
        if key not in names:
            raise ProtocolError(E_SCHEMA, "%s has no argument %r" % (command, key))
    for name, kind, required in specs:
        if name in args:
            _check_value(args[name], kind, command, name)
        elif required:
            raise ProtocolError(E_SCHEMA, "%s.%s is missing" % (command, name))
