"""The fleet contract: fleet.proto, its generated code, and the bundle manifest format."""
