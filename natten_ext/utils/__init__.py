"""Internal helpers of natten_ext: argument checks and window index computation."""
