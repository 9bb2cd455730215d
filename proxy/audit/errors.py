"""The audit stores' own error, apart from `storage.py` so that the stores can raise it
without importing the module that opens them."""

from __future__ import annotations


class AuditStoreUnavailable(Exception):
    """The store cannot be reached right now (a database down or restarting). Transient:
    the writer keeps the batch and tries again later; readers report it and stop."""
