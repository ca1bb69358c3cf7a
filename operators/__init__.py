"""One module per stage: plain-Python logic first, a thin Bytewax wrapper last (if any)."""
