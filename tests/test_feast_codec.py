"""transforms/io/online/feast_codec.py writes Feast's online bytes without Feast at run time: entity
keys (serialization v3), Value protobufs, Redis field hashes and event-time stamps, each checked
here against Feast's own functions (Feast 0.67, the dev extra). That Feast reads whole stores we
wrote is tested in test_stores.py."""

from __future__ import annotations

import datetime as dt
import struct

from feast.infra.key_encoding_utils import serialize_entity_key as feast_serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3 as feast_field_hash
from feast.infra.online_stores.helpers import _redis_key as feast_redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Value
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.io.online.feast_codec import (
    decode_value,
    encode_timestamp,
    encode_value,
    entity_key_encoder,
    feature_field,
    serialize_entity_key,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
MAX_MILLIS = 253402300799999  # the last millisecond of year 9999, the parser's limit


def feast_value(value, kind: str) -> Value:
    """A feature value as Feast builds its Value proto."""
    if kind == "int64":
        return Value(int64_val=value)
    if kind == "double":
        return Value(double_val=value)
    if kind == "string":
        return Value(string_val=value)
    return Value(float_list_val=FloatList(val=value))


def feast_timestamp(millis: int) -> bytes:
    """The `_ts:<view>` field as Feast's Redis store writes it (Timestamp.FromDatetime)."""
    ts = Timestamp()
    ts.FromDatetime(dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=millis))
    return ts.SerializeToString()


def test_golden_bytes_match_feasts_layout():
    # /work/shared/REFERENCE.md golden values, computed with Feast's own functions.
    assert (serialize_entity_key(["user_id"], ["u1"], ["string"]) + b"shop").hex() == (
        "010000000200000007000000757365725f69640200000002000000753173686f70")
    assert feature_field("user_5m", "clicks").hex() == "0e466c7a"
    assert encode_timestamp(1767225900000).hex() == "08acf4d6ca06"
    assert encode_value(5, "int64").hex() == "2005"
    assert encode_value(12.5, "double").hex() == "29" + struct.pack("<d", 12.5).hex()
    assert encode_value("i9", "string").hex() == "12026939"
    assert encode_value([0.5, -1], "float_list").hex() == "82010a0a080000003f000080bf"
    assert encode_value(None, "double") == b""


def test_redis_key_and_field_are_feasts():
    key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="u1")])
    assert serialize_entity_key(["user_id"], ["u1"], ["string"]) + b"shop" == feast_redis_key("shop", key, 3)
    assert feature_field("user_5m", "clicks") == feast_field_hash("user_5m:clicks")


def test_entity_keys_match_feast_for_strings_ints_and_several_keys():
    key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=-42)])
    assert serialize_entity_key(["user_id"], [-42], ["int64"]) == feast_serialize_entity_key(key, 3)
    key = EntityKey(join_keys=["z", "a"], entity_values=[Value(string_val="ž"), Value(int64_val=7)])
    assert serialize_entity_key(["z", "a"], ["ž", 7], ["string", "int64"]) == feast_serialize_entity_key(key, 3)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1), st.one_of(st.text(), INT64), min_size=1, max_size=4))
def test_entity_keys_are_feasts_for_any_names_and_values(entity):
    names, values = list(entity), list(entity.values())
    dtypes = ["int64" if isinstance(v, int) else "string" for v in values]
    key = EntityKey(join_keys=names, entity_values=[feast_value(v, t) for v, t in zip(values, dtypes)])
    assert serialize_entity_key(names, values, dtypes) == feast_serialize_entity_key(key, 3)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.one_of(st.text(), INT64), st.binary(max_size=8))
def test_the_sinks_key_encoder_is_feasts_key_and_suffix(name, value, suffix):
    dtype = "int64" if isinstance(value, int) else "string"
    key = EntityKey(join_keys=[name], entity_values=[feast_value(value, dtype)])
    assert entity_key_encoder(name, dtype, suffix)(value) == feast_serialize_entity_key(key, 3) + suffix


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_feature_fields_are_feasts_hash(view, feature):
    assert feature_field(view, feature) == feast_field_hash(f"{view}:{feature}")


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.tuples(st.just("int64"), INT64),
    st.tuples(st.just("double"), st.floats(allow_nan=False)),
    st.tuples(st.just("string"), st.text()),
    st.tuples(st.just("float_list"), st.lists(st.floats(width=32, allow_nan=False), max_size=5)),
), st.integers(0, MAX_MILLIS))
def test_values_and_timestamps_are_feasts_bytes(typed_value, millis):
    """The hand-written wire format of the sink's hot path is byte for byte Feast's Value proto
    (a oneof member is written even when it is zero), and reads back through both."""
    kind, value = typed_value
    encoded = encode_value(value, kind)
    assert encoded == feast_value(value, kind).SerializeToString()
    assert decode_value(encoded) == value
    feast_read = Value.FromString(encoded)
    assert feast_read.WhichOneof("val") == f"{kind}_val"
    assert encode_timestamp(millis) == feast_timestamp(millis)


def test_varint_boundaries_are_feasts_bytes():
    """The one-byte fast paths (int64 0..127, strings under 128 bytes) and the values beside them."""
    for number in (0, 1, 127, 128, 300, 16383, 16384, -1, 2**63 - 1, -(2**63)):
        assert encode_value(number, "int64") == Value(int64_val=number).SerializeToString()
    for text in ("", "a" * 127, "a" * 128, "ž" * 64, "x" * 20_000):
        assert encode_value(text, "string") == Value(string_val=text).SerializeToString()


def test_none_is_an_empty_value_feast_reads_as_null():
    assert Value.FromString(encode_value(None, "int64")).WhichOneof("val") is None
    assert decode_value(b"") is None and decode_value(None) is None
