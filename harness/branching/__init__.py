"""Harness branches: names and marks, create / delete / restore under the ownership rule,
templates and their fingerprint, the check that URLs name the branch."""
