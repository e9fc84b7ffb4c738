"""SIMULATIONS and truth-based evaluation, never production: synthetic data with a hidden truth, simulated judges
and humans, accuracy against that truth."""
