"""Stage 2 (paper 3.3): consistency filtering (signals, decision rules), recycling, blind canaries, the run steps."""
