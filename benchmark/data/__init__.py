"""Data: formats, synthetic generators, labeled/unlabeled sampling, augmentation."""
