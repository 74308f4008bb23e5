"""Answers a program can use: the answer's format (a JSON Schema, a regular expression, a set of
labels to score) as the user gives it (spec.py), checked before any model loads.

No torch and no llguidance at import: `dsvl --help` reads the options that name these.
"""
