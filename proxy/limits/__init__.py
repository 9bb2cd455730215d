"""Per-tenant limits: requests and tokens per minute, requests in flight (docs/config.md).

`install_limits` wraps the gateway's chat service; counters live in Redis when
`limits.redis_url` is set (shared by every replica) and in process otherwise.
"""
