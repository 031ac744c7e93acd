"""litejobs sealing: secrets stored so that a copied database or backup alone does not reveal them.

A sealed value is encrypted and authenticated with keys derived from
SECRET_KEY, which lives in the environment, never in DATA_DIR. The standard
library has no cipher, so this is the textbook construction from its HMAC:
HMAC-SHA256 in counter mode as the key stream (a PRF-based stream cipher), a
fresh random 16-byte nonce per value, and encrypt-then-MAC with a separate
HMAC-SHA256 key over version, nonce and ciphertext. Both keys come from
SECRET_KEY through HMAC with distinct labels.

Stored form: `sealed:v1:` + base64url(nonce ‖ ciphertext ‖ 16-byte tag). A
value without that prefix is a plain one written before sealing existed:
unseal() returns it as it is, so old rows stay readable until they are sealed.
Changing SECRET_KEY makes sealed values unreadable (UnsealError).
"""

import base64
import hashlib
import hmac
import secrets

import settings

PREFIX = "sealed:v1:"
NONCE_BYTES = 16
TAG_BYTES = 16


class UnsealError(ValueError):
    """A sealed value that does not open: damaged, or sealed under another SECRET_KEY."""


def _key(label, secret_key=None):
    secret_key = settings.SECRET_KEY if secret_key is None else secret_key
    return hmac.new(secret_key.encode("utf-8"), b"litejobs sealing v1: " + label, hashlib.sha256).digest()


def _stream(key, nonce, length):
    blocks = []
    for counter in range((length + 31) // 32):
        blocks.append(hmac.new(key, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest())
    return b"".join(blocks)[:length]


def _tag(key, nonce, ciphertext):
    return hmac.new(key, b"v1" + nonce + ciphertext, hashlib.sha256).digest()[:TAG_BYTES]


def is_sealed(value):
    return isinstance(value, str) and value.startswith(PREFIX)


def seal(plain, secret_key=None):
    """`plain` (str) encrypted and authenticated, as text to store."""
    data = plain.encode("utf-8")
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = bytes(a ^ b for a, b in zip(data, _stream(_key(b"encrypt", secret_key), nonce, len(data))))
    tag = _tag(_key(b"authenticate", secret_key), nonce, ciphertext)
    return PREFIX + base64.urlsafe_b64encode(nonce + ciphertext + tag).decode("ascii")


def unseal(stored, secret_key=None):
    """The plain text of a value from seal(); a value that was never sealed comes back as it is."""
    if not is_sealed(stored):
        return stored
    try:
        raw = base64.urlsafe_b64decode(stored[len(PREFIX) :].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise UnsealError("sealed value is damaged (not base64)") from None
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise UnsealError("sealed value is damaged (too short)")
    nonce, ciphertext, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:-TAG_BYTES], raw[-TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(_key(b"authenticate", secret_key), nonce, ciphertext)):
        raise UnsealError("sealed value does not open: damaged, or sealed under another SECRET_KEY")
    data = bytes(a ^ b for a, b in zip(ciphertext, _stream(_key(b"encrypt", secret_key), nonce, len(ciphertext))))
    return data.decode("utf-8")
