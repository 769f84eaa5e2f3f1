"""backends.faults in-process: the test-only fault a worker can be given."""

from __future__ import annotations

import numpy as np
import pytest

from backends.errors import InvalidInput
from backends.faults import Fault, rotate, scramble_reply


def test_parse() -> None:
    assert Fault.parse({}) == Fault()
    assert Fault.parse({"status": 500}) == Fault(500, False)
    assert Fault.parse({"scramble": True}).as_json() == {"status": 0, "scramble": True}
    bad: object
    for bad in ([], {"status": 200}, {"status": "500"}, {"scramble": 1}, {"other": 1}):
        with pytest.raises(InvalidInput):
            Fault.parse(bad)


def test_scramble_moves_every_argmax_and_keeps_shapes() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    rolled = rotate(probs)
    assert rolled.shape == probs.shape
    assert (np.argmax(rolled, axis=-1) != np.argmax(probs, axis=-1)).all()
    assert rotate(np.array([1.0, 2.0]))[0] == 2.0 and rotate(np.array(3.0)) == 3.0
    reply = scramble_reply({"predictions": probs.tolist()})
    assert np.argmax(reply["predictions"][0]) == 2
    named = scramble_reply({"predictions": [{"p": [0.9, 0.1], "label": "x"}]})
    row = named["predictions"][0]
    assert np.asarray(row["p"]).tolist() == [0.1, 0.9] and row["label"] == "x"
    cols = scramble_reply({"outputs": {"p": [[0.9, 0.1]]}})
    assert np.asarray(cols["outputs"]["p"]).tolist() == [[0.1, 0.9]]
