"""The audit trail: one record per moderation decision (`record`), a SQLite store (`store`), a
bounded background writer that never blocks the request path (`writer`), and asynchronous THINK
re-checks that attach the guard's reasoning to records (`think`).
"""
