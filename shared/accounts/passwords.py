"""Password hashing: argon2id through argon2-cffi.

Parameters: OWASP's argon2id setting of m = 19 MiB, t = 2, p = 1 (about 22 ms a hash on the
2-core development machine; RFC 9106's 64 MiB, t = 3, p = 4 took 154 ms there and would hold
64 MiB per concurrent login on a 512 MB instance). A stored hash with other parameters still
verifies, and login replaces it (needs_rehash), so they can be raised later.
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)

MIN_PASSWORD_LENGTH = 12

# Verified against when the login names no user, so an unknown account costs the same argon2
# work as a wrong password: the two cannot be told apart by timing.
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True if password matches; with no stored hash, does the same work and returns False."""
    try:
        return HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return HASHER.check_needs_rehash(stored_hash)


def generate_password() -> str:
    """A password for a user created without one: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)
