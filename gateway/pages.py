"""Records read straight from the table-leaf pages of an SQLite file, for a salvage when SQLite cannot get to them.

When the schema page, a header field or an interior page of a B-tree is
damaged, SQLite cannot reach leaf pages that are intact. This walks the file
page by page instead and parses every table-leaf cell (with its overflow
chain) as SQLite's file format defines it (https://sqlite.org/fileformat.html,
sections 1.6 and 2.1): which table a record belonged to is not known here; the
caller tells by the record's shape. Pages on the freelist are skipped where
the freelist can be read (they hold deleted rows); what a damaged freelist
hides may come back as rows deleted before, which costs duplicates, never
readings. Only the main file is read: frames still in the WAL are SQLite's to
read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

DEFAULT_PAGE = 4096  # when the header's page size is damaged: the buffer's page size is SQLite's default
TABLE_LEAF = 0x0D
MAX_OVERFLOW = 1 << 16  # overflow pages followed for one cell at most (a chunk body is far smaller)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's variable-length integer at data[at:]: (value, offset after it). IndexError past the end."""
    value = 0
    for index in range(8):
        byte = data[at + index]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + index + 1
    return (value << 8) | data[at + 8], at + 9


def _value(serial: int, data: bytes, at: int) -> tuple[object, int]:
    if serial == 0:
        return None, at
    if 1 <= serial <= 6:
        size = (0, 1, 2, 3, 4, 6, 8)[serial]
        if at + size > len(data):
            raise IndexError("record runs past its payload")
        return int.from_bytes(data[at : at + size], "big", signed=True), at + size
    if serial == 7:
        if at + 8 > len(data):
            raise IndexError("record runs past its payload")
        return struct.unpack(">d", data[at : at + 8])[0], at + 8
    if serial in (8, 9):
        return serial - 8, at
    if serial >= 12:
        size = (serial - 12) // 2
        if at + size > len(data):
            raise IndexError("record runs past its payload")
        raw = data[at : at + size]
        return (raw if serial % 2 == 0 else raw.decode("utf-8", "surrogateescape")), at + size
    raise ValueError("reserved serial type %d" % serial)


def record(payload: bytes) -> list[object]:
    """The column values of a record (text as str, blobs as bytes); ValueError or IndexError if it is not one."""
    header_size, at = _varint(payload, 0)
    if header_size > len(payload) or header_size < 1:
        raise ValueError("record header longer than the record")
    serials = []
    while at < header_size:
        serial, at = _varint(payload, at)
        serials.append(serial)
    values = []
    at = header_size
    for serial in serials:
        value, at = _value(serial, payload, at)
        values.append(value)
    return values


class _File:
    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file = file
        header = file.read(100)
        page_size = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
        page_size = 65536 if page_size == 1 else page_size
        self.page_size = page_size if 512 <= page_size <= 65536 and not page_size & (page_size - 1) else DEFAULT_PAGE
        reserved = header[20] if len(header) == 100 else 0
        self.usable = self.page_size - (reserved if reserved < 32 else 0)
        self.pages = size // self.page_size
        self.first_trunk = int.from_bytes(header[32:36], "big") if len(header) == 100 else 0

    def page(self, number: int) -> bytes:
        self.file.seek((number - 1) * self.page_size)
        return self.file.read(self.page_size)

    def free_pages(self) -> set[int]:
        """The freelist, as far as it can be followed."""
        free: set[int] = set()
        trunk = self.first_trunk
        while 1 < trunk <= self.pages and trunk not in free:
            free.add(trunk)
            data = self.page(trunk)
            count = int.from_bytes(data[4:8], "big")
            if count > (self.usable - 8) // 4:
                break
            free.update(int.from_bytes(data[8 + 4 * index : 12 + 4 * index], "big") for index in range(count))
            trunk = int.from_bytes(data[0:4], "big")
        return free

    def payload(self, data: bytes, cell: int) -> tuple[int, bytes]:
        """(rowid, payload) of the table-leaf cell at data[cell:], its overflow pages followed."""
        length, at = _varint(data, cell)
        rowid, at = _varint(data, at)
        usable = self.usable
        most = usable - 35
        if length <= most:
            local = length
        else:
            least = (usable - 12) * 32 // 255 - 23
            local = least + (length - least) % (usable - 4)
            if local > most:
                local = least
        if at + local > len(data):
            raise IndexError("cell runs past its page")
        payload = bytearray(data[at : at + local])
        if local < length:
            following = int.from_bytes(data[at + local : at + local + 4], "big")
            for _ in range(MAX_OVERFLOW):
                if len(payload) >= length or not 1 < following <= self.pages:
                    break
                page = self.page(following)
                following = int.from_bytes(page[0:4], "big")
                payload += page[4:usable][: length - len(payload)]
            if len(payload) < length:
                raise IndexError("overflow chain broken")
        return rowid, bytes(payload)


def leaf_records(path: Path) -> Iterator[tuple[int, list[object]]]:
    """(rowid, column values) of every table-leaf cell in the file that parses, page by page."""
    with open(path, "rb") as file:
        found = _File(file, path.stat().st_size)
        free = found.free_pages()
        for number in range(1, found.pages + 1):
            if number in free:
                continue
            data = found.page(number)
            start = 100 if number == 1 else 0
            if len(data) < start + 8 or data[start] != TABLE_LEAF:
                continue
            cells = int.from_bytes(data[start + 3 : start + 5], "big")
            for index in range(min(cells, (len(data) - start - 8) // 2)):
                pointer = int.from_bytes(data[start + 8 + 2 * index : start + 10 + 2 * index], "big")
                try:
                    rowid, payload = found.payload(data, pointer)
                    values = record(payload)
                except (IndexError, ValueError):  # a cell damaged with its page: costs that cell
                    continue
                yield rowid, values
