import hashlib
import hmac
import re
import time

_T = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() and isdigit() also take "²", "١", "1_0", " +1"
_V1 = re.compile(r"[0-9a-f]{64}")


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """True when X-Dfscan-Signature `header` signs the raw `body`; never raises."""
    if not secret.strip():
        return False  # anyone can sign with an empty secret
    stamps, candidates = [], []
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key == "t":
            stamps.append(value)
        elif key == "v1" and _V1.fullmatch(value):
            candidates.append(value.encode())
    if len(stamps) != 1 or not _T.fullmatch(stamps[0]) or abs(time.time() - int(stamps[0])) > tolerance:
        return False
    message = stamps[0].encode() + b"." + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest().encode()
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
