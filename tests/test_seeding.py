"""Seeded choices: a hash of a salt and an id, independent of input order; the same values as before the helper."""

import hashlib

from synpref.seeding import seeded_digest, seeded_int, seeded_rank, seeded_sample


def test_the_helpers_are_the_hashes_the_pipeline_always_used():
    pid = "ab" * 16
    assert seeded_rank("probe", 0, pid) == hashlib.sha256(f"probe:0:{pid}".encode()).hexdigest()
    assert seeded_int(pid) == int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16)  # the gold-validation split
    assert seeded_digest(3, pid, "judge", 1) == hashlib.sha256(f"3:{pid}:judge:1".encode()).digest()


def test_a_seeded_sample_does_not_depend_on_the_order_rows_arrive_in():
    rows = [{"pair_id": f"p{i}"} for i in range(50)]
    first = seeded_sample(rows, 10, "spot", 0)
    assert seeded_sample(list(reversed(rows)), 10, "spot", 0) == first
    assert seeded_sample(rows, 10, "spot", 1) != first  # another seed, another sample
    assert seeded_sample(rows, 10, "probe", 0) != first  # another choice, independent of this one
    assert len(seeded_sample(rows, None, "spot", 0)) == 50
