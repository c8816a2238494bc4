"""`const()` on both interpreters: MicroPython folds it at compile time, CPython just returns the value."""

try:
    from micropython import const
except ImportError:  # CPython

    def const(value: int) -> int:  # type: ignore[misc,no-redef]
        return value


__all__ = ["const"]
