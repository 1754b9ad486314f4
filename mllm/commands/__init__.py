"""Command lines, one module per command; the library below them takes typed arguments."""
