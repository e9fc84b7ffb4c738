"""LLM generation of the 5 preference attributes."""

from conftest import annotator_cfg
from synpref.llm.attributes import generate_attributes


def test_attribute_generation_fills_missing_attributes(sim_server, tmp_path):
    from synpref.simulation.synthetic import generate

    pairs, _ = generate(20, seed=7, noise=0.3, with_attributes=False)
    table, _ = generate_attributes(pairs.to_pylist(), annotator_cfg(sim_server, "good"), tmp_path / "c")
    assert set(table.column("attributes_status").to_pylist()) <= {"generated", "attributes_missing"}
    assert table.column("attributes_status").to_pylist().count("generated") >= 18
