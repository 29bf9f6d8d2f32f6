"""Reports rendered from a finished run directory (torch-free: they only read files)."""
