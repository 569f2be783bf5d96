"""The control plane: the project's state and its records, operations and the project lock,
branches, restores, history, catalog and computes."""
