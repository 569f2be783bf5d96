"""Cleaning up after runs: the watchdog, a run's files, the controller's sweep, what
stopped servers left, gc's policy."""
