"""Rehearsing migrations on a fork of a branch that holds data (`cathouse-branch rehearse`):
each revision's time, locks and rows, and the schema diff against the parent."""
