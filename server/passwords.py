"""Password hashing (argon2id; older scrypt hashes still verify) and random tokens that are stored only as hashes."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's Password Storage Cheat Sheet (2024): argon2id with 19 MiB, 2 passes, 1 lane.
ARGON2_MEMORY_KIB, ARGON2_TIME, ARGON2_LANES = 19 * 1024, 2, 1
_HASHER = PasswordHasher(time_cost=ARGON2_TIME, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_LANES)
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # bounds the work an attacker can request per login attempt
# The largest scrypt cost a stored legacy hash may ask for, so a tampered row cannot exhaust memory.
_SCRYPT_MAX_N = 2**17


def hash_password(password: str) -> str:
    """An argon2id hash in the PHC string format (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`)."""
    return _HASHER.hash(password)


def _verify_scrypt(password: str, stored: str) -> bool:
    # Hashes written before argon2: `scrypt$n$r$p$salt$hash`.
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt" or not 1 < int(n) <= _SCRYPT_MAX_N or not 0 < int(r) <= 8 or not 0 < int(p) <= 4:
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), maxmem=2**28, dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a stored argon2 or scrypt hash; a malformed hash never matches."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        if stored.startswith("$argon2"):
            return _HASHER.verify(stored, password)
        return _verify_scrypt(password, stored)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError, TypeError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether a hash that just verified should be replaced (scrypt, or argon2 at other parameters)."""
    if not stored.startswith("$argon2"):
        return True
    try:
        return _HASHER.check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(12))


def burn_time(password: str) -> None:
    """Spend the time of one password check, so a login for an unknown user takes as long as for a known one."""
    verify_password(password, _dummy_hash())


def check_new_password(password: str) -> None:
    """Raise ValueError when a new password is too short or too long."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password must have at most {MAX_PASSWORD_CHARS} characters")


def new_token(prefix: str = "") -> str:
    """A random bearer secret of 256 bits."""
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """SHA-256 of a high-entropy token: enough for lookups, since tokens cannot be guessed."""
    return hashlib.sha256(token.encode()).hexdigest()
