"""Feast's online byte layout: entity keys (serialization v3), Value protobufs, field hashes.

We mirror `feast.types.Value` with the protobuf library (a private descriptor pool, so it never
clashes with Feast's own classes when both are imported) instead of depending on Feast at run
time. tests/test_feast_codec.py checks every encoder against Feast's own functions.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
from typing import Any, Callable, Optional, Sequence

import mmh3
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# feast.types.ValueType enum values used in entity key serialization.
VALUE_TYPE_STRING = 2
VALUE_TYPE_INT64 = 4

# feast/protos/feast/types/Value.proto, the fields we read and write (numbers are the contract).
_VALUE_FIELDS = [
    ("bytes_val", 1, descriptor_pb2.FieldDescriptorProto.TYPE_BYTES),
    ("string_val", 2, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("int32_val", 3, descriptor_pb2.FieldDescriptorProto.TYPE_INT32),
    ("int64_val", 4, descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("double_val", 5, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
    ("float_val", 6, descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT),
    ("bool_val", 7, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
    ("unix_timestamp_val", 8, descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
]
_LIST_FIELDS = [
    ("string_list_val", 12, "StringList", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("int64_list_val", 14, "Int64List", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("double_list_val", 15, "DoubleList", descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
    ("float_list_val", 16, "FloatList", descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT),
]


def _build_value_class() -> type:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="beam_features/feast_value.proto", package="beam_features.feast", syntax="proto3"
    )
    for list_name, _, list_type, scalar in [(n, i, t, s) for n, i, t, s in _LIST_FIELDS]:
        msg = fdp.message_type.add(name=list_type)
        msg.field.add(
            name="val", number=1, type=scalar, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
        )
    # message Map { map<string, Value> val = 1; } (feast.types.Map, Value.map_val = 20)
    map_msg = fdp.message_type.add(name="Map")
    entry = map_msg.nested_type.add(name="ValEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                    type_name=".beam_features.feast.Value", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    map_msg.field.add(name="val", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=".beam_features.feast.Map.ValEntry",
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    value = fdp.message_type.add(name="Value")
    value.oneof_decl.add(name="val")
    for name, number, kind in _VALUE_FIELDS:
        value.field.add(
            name=name, number=number, type=kind,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, oneof_index=0,
        )
    for name, number, list_type, _ in _LIST_FIELDS:
        value.field.add(
            name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            type_name=f".beam_features.feast.{list_type}",
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, oneof_index=0,
        )
    value.field.add(
        name="map_val", number=20, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".beam_features.feast.Map", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, oneof_index=0,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("beam_features.feast.Value"))


Value = _build_value_class()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_DOUBLE = struct.Struct("<d")


def encode_value(value: Any, value_type: str) -> bytes:
    """A feature value -> serialized Feast Value. None -> empty Value (Feast reads it as null)."""
    return value_encoder(value_type)(value)


def value_encoder(value_type: str) -> Callable[[Any], bytes]:
    """The encoder of one value type (`encode_value` without the type dispatch, for a sink that
    encodes every value of a view with the same few types).

    Scalars are written directly in protobuf wire format (a oneof member is always emitted,
    zero included) - several times faster than building a message per value on the sink's hot
    path; tests/test_feast_codec.py checks the bytes against Feast's Value proto for random values.
    """
    encoder = _SCALAR_ENCODERS.get(value_type)
    if encoder is None:
        if value_type not in _LIST_FIELDS_OF and value_type != "int64_map":
            raise ValueError(f"unsupported value type {value_type!r}")
        encoder = functools.partial(_encode_message, value_type=value_type)
    return encoder


def _encode_int64(value: Any) -> bytes:
    if value is None:
        return b""
    number = int(value)
    if 0 <= number < 128:
        return _SMALL_INT64[number]
    if 0 < number < 16384:  # counts: a two-byte varint
        return bytes((0x20, (number & 0x7F) | 0x80, number >> 7))
    return b"\x20" + _varint(number + (1 << 64) if number < 0 else number)


_SMALL_INT64 = tuple(bytes((0x20, n)) for n in range(128))  # field 4, a one-byte varint


def _encode_double(value: Any) -> bytes:
    return b"" if value is None else _TAGGED_DOUBLE.pack(0x29, float(value))


def _encode_string(value: Any) -> bytes:
    if value is None:
        return b""
    raw = str(value).encode("utf-8")
    size = len(raw)
    return (b"\x12" + (bytes((size,)) if size < 128 else _varint(size))) + raw


def _encode_message(value: Any, value_type: str) -> bytes:
    if value is None:
        return b""
    msg = Value()
    if value_type in _LIST_FIELDS_OF:
        getattr(msg, _LIST_FIELDS_OF[value_type]).val.extend(value)
    else:  # int64_map, histograms: a feast.types.Map of int64 Values
        entries = msg.map_val.val
        for key, count in value.items():
            entries[str(key)].int64_val = int(count)
        msg.map_val.SetInParent()
    return msg.SerializeToString()


_TAGGED_DOUBLE = struct.Struct("<Bd")
_SCALAR_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "int64": _encode_int64, "double": _encode_double, "string": _encode_string}


# Our list value types -> the Feast Value field holding them.
_LIST_FIELDS_OF = {"float_list": "float_list_val", "double_list": "double_list_val",
                   "string_list": "string_list_val", "int64_list": "int64_list_val"}


def decode_value(data: Optional[bytes]) -> Any:
    """Serialized Feast Value -> Python value (None for absent or empty)."""
    if not data:
        return None
    msg = Value.FromString(data)
    kind = msg.WhichOneof("val")
    if kind is None:
        return None
    if kind.endswith("_list_val"):
        return list(getattr(msg, kind).val)
    if kind == "map_val":  # most frequent first, as histograms are written
        counts = {key: decode_value(item.SerializeToString()) for key, item in msg.map_val.val.items()}
        return dict(sorted(counts.items(), key=lambda kv: (-(kv[1] or 0), kv[0])))
    return getattr(msg, kind)


def serialize_entity_key(join_keys: Sequence[str], values: Sequence[Any], dtypes: Sequence[str]) -> bytes:
    """Feast entity key serialization v3: count, then sorted keys (type, len, name), then values."""
    order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
    out = [struct.pack("<I", len(join_keys))]
    for i in order:
        name = join_keys[i].encode("utf-8")
        out.append(struct.pack("<II", VALUE_TYPE_STRING, len(name)))
        out.append(name)
    for i in order:
        if dtypes[i] == "int64":
            out.append(struct.pack("<IIq", VALUE_TYPE_INT64, 8, int(values[i])))
        else:
            raw = str(values[i]).encode("utf-8")
            out.append(struct.pack("<II", VALUE_TYPE_STRING, len(raw)))
            out.append(raw)
    return b"".join(out)


def entity_key_encoder(join_key: str, dtype: str, suffix: bytes = b"") -> Callable[[Any], bytes]:
    """`serialize_entity_key([join_key], [value], [dtype]) + suffix` as a function of the value, its
    constant head (the count and the key's name) built once: a sink's per-row key."""
    head = serialize_entity_key([join_key], [0 if dtype == "int64" else ""], [dtype])
    head = head[: len(head) - (16 if dtype == "int64" else 8)]  # without the value's own bytes
    if dtype == "int64":
        int_value = struct.Struct(f"<{len(head)}sIIq{len(suffix)}s")
        return lambda value: int_value.pack(head, VALUE_TYPE_INT64, 8, int(value), suffix)
    string_head = struct.Struct(f"<{len(head)}sII")

    def encode(value: Any) -> bytes:
        raw = str(value).encode("utf-8")
        return string_head.pack(head, VALUE_TYPE_STRING, len(raw)) + raw + suffix

    return encode


def feature_field(view: str, feature: str) -> bytes:
    """Redis hash field of a feature: unsigned murmur3_32 of 'view:feature', 4 bytes LE."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def encode_timestamp(millis: int) -> bytes:
    """google.protobuf.Timestamp bytes (proto3: zero fields omitted), as Feast's `_ts:` field."""
    seconds, nanos = divmod(millis, 1000)
    nanos *= 1_000_000
    out = b""
    if seconds:
        out += b"\x08" + _varint(seconds if seconds >= 0 else seconds + (1 << 64))
    if nanos:
        out += b"\x10" + _varint(nanos)
    return out


def ms_to_datetime(millis: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=millis)


def rfc3339(millis: Optional[int]) -> Optional[str]:
    if millis is None:
        return None
    text = ms_to_datetime(millis).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
