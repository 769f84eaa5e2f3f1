"""The Protocol Buffers wire format: just enough to read and write raw messages. Pure.

Called by `lb.grpc.messages` and `lb.grpc.batch`, which know TF Serving's field
numbers; this module knows none. The gRPC front passes request and reply bytes through
untouched, so it never needs generated classes (importing
`tensorflow_serving.apis` would load all of TensorFlow into the proxy).

Guarantees: `iter_fields` yields every top-level field of a message in wire
order as (number, wire type, value), where a varint is an `int` and every
other value is a zero-copy `memoryview` of the input; malformed input
(truncated data, bad wire types, field number 0, varints over 64 bits) raises
`lb.errors.BadRequest` and never reads past the buffer. Repeated scalars are
read in both encodings (packed runs and single values, as parsers merge them)
into one packed payload, which can be counted and cut into runs without a
Python loop per value. The encoders produce canonical encodings that any
protobuf library parses; `raw_field` writes a field back exactly as read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache

from lb.errors import BadRequest

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_FIXED = {I64: 8, I32: 4}
_U64 = (1 << 64) - 1
_HIGH = bytes(range(0x80, 0x100))
_ONE_BYTE = [bytes([i]) for i in range(0x80)]

Value = int | memoryview
Field = tuple[int, int, Value]


def _malformed(what: str) -> BadRequest:
    return BadRequest(f"malformed protobuf message: {what}")


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint starting at `pos`."""
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise _malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise _malformed("varint longer than 10 bytes")


def iter_fields(data: bytes | memoryview) -> Iterator[Field]:
    """Every top-level field of one message, in wire order (see module docstring)."""
    buf = data if isinstance(data, memoryview) else memoryview(data)
    pos, end = 0, len(buf)
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:                 # one-byte tags (fields 1-15) are the rule: no call
            pos += 1
        else:
            tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _malformed("field number 0")
        value: Value
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == LEN:
            if pos < end and buf[pos] < 0x80:
                size, pos = buf[pos], pos + 1
            else:
                size, pos = read_varint(buf, pos)
            if size > end - pos:
                raise _malformed(f"field {number} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in _FIXED:
            size = _FIXED[wire]
            if size > end - pos:
                raise _malformed(f"field {number} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise _malformed(f"unsupported wire type {wire} in field {number}")
        yield number, wire, value


def fields_of(data: bytes | memoryview, number: int, wire: int = LEN) -> list[Value]:
    """Every value of field `number` (repeated fields keep their order)."""
    return [v for n, w, v in iter_fields(data) if n == number and w == wire]


def last_of(data: bytes | memoryview, number: int, wire: int = LEN) -> Value | None:
    """The value of a singular field (protobuf: the last occurrence wins), or None."""
    found = fields_of(data, number, wire)
    return found[-1] if found else None


def messages(data: bytes | memoryview, number: int) -> list[memoryview]:
    """Every length-delimited value of field `number` (embedded messages, strings)."""
    return [v for n, w, v in iter_fields(data) if n == number and w == LEN
            and isinstance(v, memoryview)]


def message(data: bytes | memoryview, number: int) -> memoryview | None:
    """The last length-delimited value of field `number`, or None."""
    found = messages(data, number)
    return found[-1] if found else None


def as_str(value: Value | None) -> str:
    """A string field's text ('' when absent); BadRequest if it is not UTF-8."""
    if value is None:
        return ""
    if isinstance(value, int):
        raise _malformed("expected a string, got a varint")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("string field is not UTF-8") from None


def as_int64(value: Value | None) -> int | None:
    """A varint read as a signed int64, or None when absent."""
    if value is None or not isinstance(value, int):
        return None
    return value - (1 << 64) if value >= 1 << 63 else value


def count_varints(packed: bytes | memoryview) -> int:
    """How many varints a packed payload holds; BadRequest if the last one is cut."""
    if packed and packed[-1] & 0x80:
        raise _malformed("packed varints end inside a varint")
    data = packed if isinstance(packed, bytes) else bytes(packed)
    return len(data.translate(None, _HIGH))


def varint_offsets(packed: bytes | memoryview, counts: Iterable[int]) -> list[int]:
    """Byte offsets cutting a packed varint payload into runs of `counts` varints:
    [0, end of the first run, end of the second, ...]; BadRequest if too few."""
    offsets = [0]
    for n in counts:
        found = _varint_run(n).match(packed, offsets[-1]) if n > 0 else None
        if n > 0 and found is None:
            raise _malformed("fewer packed varints than expected")
        offsets.append(found.end() if found is not None else offsets[-1])
    return offsets


@lru_cache(maxsize=256)
def _varint_run(n: int) -> re.Pattern[bytes]:
    """A pattern matching `n` varints (one regex match per run: no Python loop per value)."""
    return re.compile(rb"(?:[\x80-\xff]*[\x00-\x7f]){%d}" % n)


def packed_payload(occurrences: Iterable[tuple[int, Value]], scalar_wire: int
                   ) -> bytes | None:
    """The packed payload of a repeated scalar field read in either encoding: every
    (wire type, value) occurrence in wire order, packed runs (LEN) and single values
    (`scalar_wire`: VARINT, I32 or I64) alike, as parsers merge them. None for an
    occurrence of another wire type or a packed varint run cut inside a varint."""
    chunks: list[bytes | memoryview] = []
    for wire, value in occurrences:
        if wire == LEN and isinstance(value, memoryview):
            if scalar_wire == VARINT and value and value[-1] & 0x80:
                return None
            if scalar_wire in _FIXED and len(value) % _FIXED[scalar_wire]:
                return None
            chunks.append(value)
        elif wire != scalar_wire:
            return None
        elif isinstance(value, int):
            chunks.append(encode_varint(value))
        else:
            chunks.append(value)
    return b"".join(chunks)


# -- writing -------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """The varint encoding of a non-negative (or two's-complement int64) value."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    """Field `number` as a varint (omit the call for proto3 defaults if you like)."""
    return encode_varint(number << 3 | VARINT) + encode_varint(value)


def len_field(number: int, payload: bytes | memoryview | str) -> bytes:
    """Field `number` as length-delimited bytes, a string or an embedded message."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return encode_varint(number << 3 | LEN) + encode_varint(len(data)) + data


def raw_field(number: int, wire: int, value: Value) -> bytes:
    """A field written back exactly as `iter_fields` read it (to copy fields through)."""
    if isinstance(value, int):
        return encode_varint(number << 3 | wire) + encode_varint(value)
    if wire == LEN:
        return len_field(number, value)
    return encode_varint(number << 3 | wire) + value
