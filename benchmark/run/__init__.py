"""Trial expansion (suite -> method x labeled x seed) and executors (local now; Ray in `run/ray_executor`)."""
