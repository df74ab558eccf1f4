"""bidir: an LLM teacher and an RL student that teach each other (Gu, bi-directional feedback)."""
