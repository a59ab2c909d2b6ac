"""Internal helpers of natten_ext: argument checks, window index computation, graph-capture test."""
