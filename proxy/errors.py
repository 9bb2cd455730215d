"""The gateway's one error hierarchy, rendered in one place to the OpenAI error envelope.

    GatewayError                          status  type                    code
    ├── InvalidRequest                    400     invalid_request_error   (given)
    │   ├── InvalidJSON                   400                             invalid_json
    │   ├── InvalidField                  400                             invalid_type / (given)
    │   └── ContentPolicyViolation        400                             content_policy_violation
    ├── Unauthorized                      401     authentication_error    invalid_api_key
    ├── NotFound                          404     invalid_request_error   not_found, model_not_found
    ├── MethodNotAllowed                  405     invalid_request_error   method_not_allowed
    ├── PayloadTooLarge                   413     invalid_request_error   payload_too_large
    ├── RateLimited                       429     rate_limit_error        rate_limit_exceeded
    ├── UpstreamError                     502     upstream_error          upstream_unreachable
    ├── GuardUnavailableError             503     guard_error             guard_unavailable
    ├── ShuttingDown                      503     server_error            server_shutting_down
    └── UpstreamTimeout                   504     upstream_error          upstream_timeout

A policy decision is never a 5xx: SDKs retry 5xx. Only infrastructure failures are.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidField(InvalidRequest):
    code = "invalid_type"


class ContentPolicyViolation(InvalidRequest):
    code = "content_policy_violation"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(GatewayError):
    """An upstream provider rate-limited the request; the client should back off and retry."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class GuardUnavailableError(GatewayError):
    status = 503
    type = "guard_error"
    code = "guard_unavailable"


class ShuttingDown(GatewayError):
    """The server's graceful-shutdown deadline passed while the request was still running."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"

    def __init__(self, message: str = "The gateway is shutting down; please retry.") -> None:
        super().__init__(message, headers={"retry-after": "1"})


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class InternalError(GatewayError):
    """A bug. Rendered without details; the traceback goes to the log, never to the client."""

    status = 500
    type = "server_error"
    code = "internal_error"
