"""Model definitions that ship with the project (no downloaded weights)."""
