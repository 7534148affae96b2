"""Data: reading sets and manifests, groups and near-duplicates, the shortcut audit, augmentation and perturbations."""
