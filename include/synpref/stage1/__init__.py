"""Stage 1 (paper 3.2): human-verification intake (gold), adaptive retrieval, silver, the review queue, round steps."""
