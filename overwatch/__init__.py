"""Overwatch: the operator console for esper_engine."""
