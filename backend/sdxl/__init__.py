"""SDXL's own parts: size (micro-)conditioning and the size buckets it was trained on."""
