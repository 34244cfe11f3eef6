"""The one error tree; app/api/errors.py maps it to HTTP."""


class VramqError(Exception):
    """Raised when a request cannot be served; carries a stable snake_case code."""

    code = "vramq_error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(VramqError):
    """Raised when a named thing does not exist."""

    code = "not_found"
    status = 404


class JobNotFound(NotFound):
    """Raised when no job has the given id."""

    code = "job_not_found"


class AliasNotFound(NotFound):
    """Raised when a model has no alias of that name."""

    code = "alias_not_found"


class ModelNotFound(NotFound):
    """Raised when a model, version or artifact does not exist."""

    code = "model_not_found"


class RunNotFound(NotFound):
    """Raised when a job has no attempt with the given number."""

    code = "run_not_found"


class Unauthorized(VramqError):
    """Raised when a request carries no valid token."""

    code = "unauthorized"
    status = 401


class Forbidden(VramqError):
    """Raised when a user asks for what only an admin may do."""

    code = "forbidden"
    status = 403


class Conflict(VramqError):
    """Raised when a request conflicts with the current state."""

    code = "conflict"
    status = 409


class UserExists(Conflict):
    """Raised when a user name is taken."""

    code = "user_exists"


class JobFinished(Conflict):
    """Raised when cancelling a job that has already ended."""

    code = "job_finished"


class VramUnsatisfiable(VramqError):
    """Raised when no live GPU could ever hold the request."""

    code = "vram_unsatisfiable"
    status = 422


class QuotaExceeded(VramqError):
    """Raised when a user already has as many queued jobs as the quota allows."""

    code = "quota_exceeded"
    status = 429


class NoHistory(VramqError):
    """Raised when vram_mb is "auto" but no earlier successful run of the same job measured its peak."""

    code = "no_vram_history"
    status = 422


class IllegalTransition(Exception):
    """Raised when a job is asked to move to a status its current one cannot reach (a bug, not input)."""
