"""Evolution: the pure genetic-algorithm core and the evolution store (no torch, no ray)."""
