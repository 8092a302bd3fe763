"""The reward model: loading, scoring and the soft-label trainer (`model`), and the `reward` stage (`stage`)."""
