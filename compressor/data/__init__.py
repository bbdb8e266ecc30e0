"""Real, bundled data sets with fixed splits (nothing is downloaded)."""
