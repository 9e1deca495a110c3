"""Who is asking: the ``user_id`` of a verified HS256 JWT when ``JWT_SECRET`` is set.

Manticore took the user id from the JWT in the same way. A token is accepted only if its
signature verifies with the secret under HS256 (no other algorithm, never ``none``), it has not
expired (``exp``, when present, with a few seconds of leeway for clock skew) and its
``user_id`` is a valid user id. Everything else is a 401 that says which of these failed, and
a token for one user never reaches another user's keys (a 403).
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from controllers.api.ids import is_user_id

LEEWAY_SECONDS = 5.0


class AuthError(Exception):
    """The request cannot be attributed to a user; ``status`` is 401 or 403."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Verifier:
    """Checks bearer tokens against ``secret``; without a secret, nothing is checked."""

    secret: str | None

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def user_of(self, token: str | None) -> str | None:
        """The token's user id; None when JWTs are not in use. Raises :class:`AuthError`."""
        if not self.secret:
            return None
        if not token:
            raise AuthError("a bearer token is required (Authorization: Bearer <JWT>)")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                leeway=LEEWAY_SECONDS,
                options={"require": ["user_id"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the token has expired") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("the token has no user_id claim") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}") from exc
        user = claims.get("user_id")
        if not isinstance(user, str) or not is_user_id(user):
            raise AuthError("the token's user_id is not a valid user id ([A-Za-z0-9-]{1,64})")
        return user

    def check_owner(self, token: str | None, user: str) -> None:
        """Refuse unless the token (when JWTs are in use) is ``user``'s."""
        owner = self.user_of(token)
        if owner is not None and owner != user:
            raise AuthError("this token belongs to another user", status=403)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("expected Authorization: Bearer <JWT>")
    return token.strip()
