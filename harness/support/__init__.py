"""The small pieces the rest stands on: environment, logging, secrets, waiting, threads,
locks, processes, paths, timestamps."""
