"""Path, body and Cache-Control parsing (pure)."""

from __future__ import annotations

import pytest

from lb.errors import BadRequest, NotFound
from lb.request.directives import parse_cache_control
from lb.rest.routes import RowSizes, parse_body, parse_path


@pytest.mark.parametrize(("path", "model", "version", "label", "verb", "meta"), [
    ("/v1/models/m", "m", None, None, None, False),
    ("/v1/models/m/metadata", "m", None, None, None, True),
    ("/v1/models/m:predict", "m", None, None, "predict", False),
    ("/v1/models/m/versions/123:classify", "m", 123, None, "classify", False),
    ("/v1/models/m/labels/stable:regress", "m", None, "stable", "regress", False),
    ("/v1/models/m/versions/7/metadata", "m", 7, None, None, True),
])
def test_tf_serving_paths(path: str, model: str, version: int | None, label: str | None,
                          verb: str | None, meta: bool) -> None:
    r = parse_path(path)
    assert (r.model, r.version, r.label, r.verb, r.metadata) == (model, version, label, verb, meta)
    assert r.path() == path


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/", "/v1/models/m:explode",
                                  "/v1/models/m/versions/x", "/v2/models/m", "/v1/models/m/a/b"])
def test_other_paths_are_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        parse_path(path)


def test_pinning_a_version() -> None:
    assert parse_path("/v1/models/m:predict").path(version=5) == "/v1/models/m/versions/5:predict"


def test_body_rows_and_signature() -> None:
    assert parse_body(b'{"instances": [1, 2, 3]}', "predict").rows == 3
    assert parse_body(b'{"inputs": {"a": [[1], [2]], "b": [[3], [4]]}}', "predict").rows == 2
    assert parse_body(b'{"inputs": 5}', "predict").rows == 1
    b = parse_body(b'{"signature_name": "s", "examples": [{"x": 1}, {"x": 2}]}', "classify")
    assert (b.rows, b.signature_name) == (2, "s")
    assert parse_body(b'{"instances": [1]}', "predict").signature_name == "serving_default"


@pytest.mark.parametrize(("raw", "verb", "words"), [
    (b"{not json", "predict", "JSON Parse error"),
    (b"[1, 2]", "predict", "JSON object"),
    (b"{}", "predict", "Missing 'inputs' or 'instances'"),
    (b'{"instances": [1], "inputs": [1]}', "predict", "not both"),
    (b'{"instances": 3}', "predict", "array"),
    (b'{"instances": [1]}', "regress", "Missing 'examples'"),
    (b'{"instances": [1], "signature_name": 3}', "predict", "signature_name"),
    (b"", "predict", "JSON Parse error"),
])
def test_malformed_bodies(raw: bytes, verb: str, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        parse_body(raw, verb)


def test_cache_control() -> None:
    d = parse_cache_control(None)
    assert (d.lookup, d.store, d.only_if_cached) == (True, True, False)
    d = parse_cache_control("no-cache")
    assert (d.lookup, d.store) == (False, True)
    d = parse_cache_control("No-Store, max-age=0")
    assert (d.lookup, d.store) == (False, False)
    assert parse_cache_control("only-if-cached").only_if_cached


def _rows_body(rows: int, width: int = 100) -> bytes:
    row = b"[%s]" % b", ".join([b"0.2500"] * width)
    return b'{"instances": [%s]}' % b", ".join([row] * rows)


def test_row_sizes_parse_until_warm_then_estimate_from_size() -> None:
    sizes = RowSizes()
    for _ in range(RowSizes.WARM):
        body = _rows_body(1)
        assert sizes.rows("m", "predict", len(body)) is None        # a parse is due
        sizes.learn("m", "predict", len(body), parse_body(body, "predict").rows)
    for rows in (1, 2, 8, 64):
        assert sizes.rows("m", "predict", len(_rows_body(rows))) == rows
    assert sizes.rows("other", "predict", 100) is None               # per model
    assert sizes.rows("m", "classify", 100) is None                  # and per verb


def test_row_sizes_keep_parsing_one_body_in_every() -> None:
    sizes = RowSizes()
    body = _rows_body(2)
    for _ in range(RowSizes.WARM):
        sizes.learn("m", "predict", len(body), 2)
    answers = [sizes.rows("m", "predict", len(body)) for _ in range(3 * RowSizes.EVERY)]
    due = [i for i, a in enumerate(answers) if a is None]
    assert due == list(range(RowSizes.EVERY - 1, 3 * RowSizes.EVERY))   # until learned
    assert all(a == 2 for a in answers[:RowSizes.EVERY - 1])
    sizes.learn("m", "predict", len(body), 2)
    assert sizes.rows("m", "predict", len(body)) == 2                # learned: estimates
    for _ in range(40):                                              # rows twice as wide
        sizes.learn("m", "predict", len(_rows_body(1, width=200)), 1)
    assert sizes.rows("m", "predict", len(_rows_body(4, width=200))) == 4   # it follows


def test_row_sizes_of_small_rows_stay_proportional() -> None:
    sizes = RowSizes()
    for _ in range(RowSizes.WARM):
        sizes.learn("m", "predict", len(_rows_body(1, width=4)), 1)
    for rows in (2, 8, 64):
        estimate = sizes.rows("m", "predict", len(_rows_body(rows, width=4)))
        assert estimate is not None and abs(estimate - rows) <= 0.15 * rows


def test_row_sizes_parse_less_often_while_the_estimate_holds() -> None:
    """Each parse that agrees doubles the interval (up to MAX_EVERY); one that does not
    brings it back to EVERY."""
    sizes = RowSizes()
    body = _rows_body(2)
    for _ in range(RowSizes.WARM):
        sizes.learn("m", "predict", len(body), 2)

    def next_due() -> int:
        n = 1
        while sizes.rows("m", "predict", len(body)) is not None:
            n += 1
        return n

    intervals = []
    for _ in range(8):
        intervals.append(next_due())
        sizes.learn("m", "predict", len(body), 2)               # the parse agrees
    assert intervals == [32, 64, 128, 256, 512, 1024, 1024, 1024]
    next_due()
    sizes.learn("m", "predict", len(body), 7)                   # it does not
    assert next_due() == RowSizes.EVERY
