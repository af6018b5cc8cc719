"""Helpers shared by the test suites (processes, private dockerds)."""
