"""The wire format between the pool and its workers: every value comes back as it went."""

import math
import sys

import pytest
from hypothesis import given, settings, strategies as st

from kernelpit.kernels import protocol
from kernelpit.kernels.arrow import DecodeError
from kernelpit.kernels.protocol import AHEAD_FROM, MARKER, MIN_PACKED, Decoder, decode, encode

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=5))
numeric_lists = st.one_of(
    st.lists(st.integers(-2**63, 2**63 - 1), min_size=MIN_PACKED, max_size=MIN_PACKED + 40),
    st.lists(st.floats(allow_nan=False), min_size=MIN_PACKED, max_size=MIN_PACKED + 40),
    st.lists(st.integers(), min_size=MIN_PACKED, max_size=MIN_PACKED + 40))  # some beyond int64
keys = st.text(max_size=5).filter(lambda k: k != MARKER)  # "$kp" is the wire's reserved key
values = st.recursive(
    st.one_of(scalars, numeric_lists),
    lambda children: st.one_of(st.lists(children, max_size=MIN_PACKED + 5),
                               st.tuples(children, children),
                               st.dictionaries(keys, children, max_size=5)),
    max_leaves=300)


def typed(value):
    """``value`` with the type of every scalar made part of it (tuples are lists on the wire)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    return type(value).__name__, value


@settings(max_examples=200, deadline=None)
@given(values)
def test_every_value_comes_back_equal_and_of_the_same_types(value):
    assert typed(decode(encode({"value": value}))["value"]) == typed(value)


def test_long_lists_of_plain_numbers_travel_as_binary_frames():
    n = MIN_PACKED
    value = {"floats": [0.5] * n, "ints": list(range(n)), "bools": [True] * n, "short": [1] * (n - 1),
             "big": [2**64] * n, "rows": [[1.5] * n, [2.5] * n]}
    frames = encode({"value": value})
    assert len(frames) == 1 + 4  # floats, ints and both rows; the others stay JSON text
    assert decode(frames)["value"] == value


@pytest.mark.parametrize("numpy_here", [True, False], ids=["numpy", "lanes"])
def test_a_list_packs_as_floats_only_when_every_item_is_a_plain_float(monkeypatch, numpy_here):
    if not numpy_here:  # the standard library's byte-lane copy
        monkeypatch.setitem(sys.modules, "numpy", None)
        monkeypatch.setattr(protocol, "_numpy", lambda: None)
    n = 3 * 16384 + 5  # several blocks of the lane copy, and a partial one
    floats = [(-1) ** i * i * 0.37 for i in range(n)]
    floats[7:10] = [math.inf, -0.0, 5e-324]
    frames = encode({"v": floats})
    assert len(frames) == 2
    out = decode(frames)["v"]
    assert [repr(x) for x in out] == [repr(x) for x in floats]
    nan = decode(encode({"v": [math.nan] * MIN_PACKED}))["v"]
    assert all(math.isnan(x) for x in nan)

    class Real(float):
        pass

    for odd in (1, True, Real(2.5), "x", None, [1.5]):
        mixed = floats[:100] + [odd] + floats[:100]
        frames = encode({"v": mixed})
        assert len(frames) == 1  # left to JSON: packing would make the odd item a float
        back = decode(frames)["v"]
        assert typed(back) == typed(mixed if type(odd) is not Real else floats[:100] + [2.5]
                                    + floats[:100])  # (JSON carries a float subclass as float)


def test_long_lists_go_ahead_of_their_message_and_come_back_in_place():
    sent = []
    big = [i * 0.25 for i in range(AHEAD_FROM // 8)]
    ints = list(range(AHEAD_FROM // 8))
    msg = {"op": "ev", "id": 1, "k": "result",
           "value": {"a": big, "b": [big, ints], "small": [0.5] * MIN_PACKED}}
    last = encode(msg, ahead=sent.append)
    assert len(sent) == 3 and len(last) == 2  # a, b[0], b[1] ahead; "small" in the message
    decoder = Decoder()
    assert [decoder.decode(m) for m in sent] == [None, None, None]
    assert decoder.decode(last) == msg
    # the lists of a message the sender gave up on do not stand in for the next message's
    abandoned = []
    encode({"value": [ints, ints]}, ahead=abandoned.append)
    for m in abandoned:
        decoder.decode(m)
    sent.clear()
    last = encode({"value": [big]}, ahead=sent.append)
    for m in sent:
        decoder.decode(m)
    assert decoder.decode(last) == {"value": [big]}
    # a message that refers to a list nobody sent ahead fails to decode, and says so
    with pytest.raises(DecodeError, match="list value refers to data that was not sent"):
        decoder.decode(last)


@pytest.mark.parametrize("header", [b'{"op":"ahead","a":"0","t":"d"}', b'{"op":"ahead","a":0,"t":"u"}',
                                    b'{"op":"ahead","a":0}', b'{"op":"ahead",'])
def test_a_malformed_list_sent_ahead_is_a_decode_error(header):
    with pytest.raises(DecodeError, match="list sent ahead of its message cannot be read"):
        Decoder().decode([header, bytes(16)])
