"""Row <-> columnar conversion of cached predict replies."""

from __future__ import annotations

import orjson

from lb.rest.formats import adapt


def test_same_shape_is_returned_untouched() -> None:
    body = b'{"predictions": [2.5, 3.0]}'
    assert adapt(body, columnar=False) is body
    pretty = b'{\n    "outputs": [3.0, 3.5]\n}'          # TF Serving's own formatting
    assert adapt(pretty, columnar=True) is pretty


def test_single_output_lists_are_the_same_tensor() -> None:
    assert orjson.loads(adapt(b'{"predictions": [2.5, 3.0]}', True) or b"") == {
        "outputs": [2.5, 3.0]}
    assert orjson.loads(adapt(b'{"outputs": [[1, 2]]}', False) or b"") == {
        "predictions": [[1, 2]]}


def test_multi_output_is_transposed_both_ways() -> None:
    rows = {"predictions": [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}]}
    cols = {"outputs": {"a": [1, 2], "b": [[1, 2], [3, 4]]}}
    assert orjson.loads(adapt(orjson.dumps(rows), True) or b"") == cols
    assert orjson.loads(adapt(orjson.dumps(cols), False) or b"") == rows


def test_unconvertible_bodies_are_misses() -> None:
    assert adapt(b'{"outputs": {"a": 1}}', False) is None          # no batch dimension
    assert adapt(b'{"outputs": {"a": [1], "b": [1, 2]}}', False) is None
    assert adapt(b"not json", True) is None
    assert adapt(b'{"results": [1]}', True) is None
