"""Keys derived from the app's secrets: one derivation for every purpose, each purpose its own key.

HKDF-SHA256 with the purpose as its info, so two purposes never share a key, and no derived key equals
the secret it comes from (the token signing key, the provisioner password). A Fernet key encrypts what
the database must keep but not read: webhook secrets, passwords queued for the broker.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derived_fernet(secret: str, purpose: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))
