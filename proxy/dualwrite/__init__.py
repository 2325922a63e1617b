"""Dual-write: the outbox, the id map, the worker keeping the secondary in step.

See docs/dual-write.md.
"""
