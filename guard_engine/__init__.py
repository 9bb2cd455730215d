"""guard_engine: content-safety checks with a guard model. Never imports `proxy`."""
