"""Authenticators: JWT by default; applications may plug in their own (interfaces.Authenticator)."""

from .jwt import JWTAuthenticator, issue_token

__all__ = ["JWTAuthenticator", "issue_token"]
