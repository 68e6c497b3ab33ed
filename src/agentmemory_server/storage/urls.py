"""Service URLs as a person may read them: in /health, /status, logs and error messages.

One rule for every URL the server is given (PostgreSQL, Redis): the password goes, whether it
sits in the user-info part (``user:password@host``) or in the query (libpq and redis-py both
read ``?password=``); everything else stays, so the reader can still tell which server is meant.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

HIDDEN = "***"


def without_password(url: str) -> str:
    """``url`` with any password replaced by ``***``; a URL without one comes back unchanged."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        # Cut the user-info itself rather than rebuilding it from hostname/port: those lower-case
        # the host and drop an IPv6 address's brackets.
        netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() == "password" for key, _ in pairs):
        query = urlencode([(k, HIDDEN if k.lower() == "password" else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    # Put together by hand: urlunsplit drops the empty authority of ``unix:///path``.
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}{fragment}"
