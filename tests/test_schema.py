import pytest

from synpref.schema import PairRecord, compute_pair_id, flip

CONV = [{"role": "user", "content": "What is 2+2?"}]


def test_pair_id_is_stable_and_content_sensitive():
    a = PairRecord(conversation=CONV, chosen="4", rejected="5")
    b = PairRecord(conversation=CONV, chosen="4", rejected="5", source="other")
    assert a.pair_id == b.pair_id == compute_pair_id(CONV, "4", "5")
    assert PairRecord(conversation=CONV, chosen="5", rejected="4").pair_id != a.pair_id
    flipped = flip(a.model_dump())
    assert flipped["chosen"] == "5"
    assert flipped["flipped"] is True
    assert PairRecord(**{**flipped, "pair_id": ""}).pair_id == a.pair_id  # identity survives a flip


@pytest.mark.parametrize(
    "bad,msg",
    [
        ({"conversation": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}, "user turn"),
        ({"conversation": CONV, "chosen": "   ", "rejected": "b"}, "empty"),
        ({"conversation": CONV, "chosen": "a", "rejected": "a"}, "identical"),
        ({"conversation": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "role"),
    ],
)
def test_validation_rejects_bad_records(bad, msg):
    with pytest.raises(Exception, match=msg):
        PairRecord(**bad)
