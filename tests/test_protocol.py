"""The wire format between the pool and its workers: every value comes back as it went."""

from hypothesis import given, settings, strategies as st

from kernelpit.kernels.protocol import MARKER, MIN_PACKED, decode, encode

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
