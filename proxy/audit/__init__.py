"""The audit trail: one record per moderation decision (`record`), stored in SQLite (`store`) or
PostgreSQL (`pg_store`) behind one interface (`storage.open_audit_store`, `AuditStorage`) with a
versioned schema (`migrations`), a bounded background writer that never blocks the request path
(`writer`), and asynchronous THINK re-checks that attach the guard's reasoning to records
(`think`).
"""
