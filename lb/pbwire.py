"""The Protocol Buffers wire format: just enough to read and write raw messages. Pure.

Called by `lb.grpc_messages`, which knows TF Serving's field numbers; this
module knows none. The gRPC front passes request and reply bytes through
untouched, so it never needs generated classes (importing
`tensorflow_serving.apis` would load all of TensorFlow into the proxy).

Guarantees: `iter_fields` yields every top-level field of a message in wire
order as (number, wire type, value), where a varint is an `int` and every
other value is a zero-copy `memoryview` of the input; malformed input
(truncated data, bad wire types, field number 0, varints over 64 bits) raises
`lb.errors.BadRequest` and never reads past the buffer. The encoders produce
canonical encodings that any protobuf library parses.
"""

from __future__ import annotations

from collections.abc import Iterator

from lb.errors import BadRequest

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_FIXED = {I64: 8, I32: 4}
_U64 = (1 << 64) - 1

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
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _malformed("field number 0")
        value: Value
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == LEN:
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


# -- writing -------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """The varint encoding of a non-negative (or two's-complement int64) value."""
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


def len_field(number: int, payload: bytes | str) -> bytes:
    """Field `number` as length-delimited bytes, a string or an embedded message."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return encode_varint(number << 3 | LEN) + encode_varint(len(data)) + data
