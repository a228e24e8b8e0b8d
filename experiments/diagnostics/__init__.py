"""Experiments that check labd itself (no hardware): no-op and sleep."""
