"""The networks (models), ordinal heads and their decoding (heads: torch, ordinal: numpy), and the
checks of what a model file declares (metadata). Imports core, faces and data."""
