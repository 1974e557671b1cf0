"""Arrow values every data-plane test round-trips, embedded and through the bridge."""

import datetime

import pandas as pd
import pyarrow as pa

TABLES = {
    "empty": pa.table({"a": pa.array([], pa.int64())}),
    "nullable": pa.table({"a": [1, None, 3], "s": ["x", None, "z"]}),
    "nested": pa.table({"l": [[1, 2], [], None], "st": [{"x": 1, "y": "a"}, None, {"x": 3, "y": None}]}),
    "dictionary": pa.table({"c": pa.array(["a", "b", "a"]).dictionary_encode()}),
    "timezone": pa.table({"t": pa.array([datetime.datetime(2024, 1, 1, 12)] * 3,
                                        pa.timestamp("us", tz="Asia/Tokyo"))}),
}

FRAMES = {
    "empty": pd.DataFrame({"a": pd.Series([], dtype="float64")}),
    "mixed": pd.DataFrame({"a": [1.5, None, 3.0], "b": pd.Categorical(["x", "y", "x"]),
                           "t": pd.date_range("2024-03-01", periods=3, tz="Europe/Paris"),
                           "n": pd.array([1, None, 3], dtype="Int64")},
                          index=pd.Index(["r1", "r2", "r3"], name="row")),
}
