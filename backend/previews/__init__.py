"""Live previews and fast decodes: A1111's Full, Approx NN, Approx cheap and TAESD methods."""
