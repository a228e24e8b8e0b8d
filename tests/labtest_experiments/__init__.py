"""Experiments that misbehave on purpose, allowed only in the test daemons' settings."""
