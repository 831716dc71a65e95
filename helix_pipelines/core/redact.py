"""One redaction for every text the project writes: messages, log lines, metadata values,
``last_error``, exception texts and CLI output.

What is hidden, whatever the text around it:

- the userinfo of a URL (``scheme://user:secret@host``): everything between ``://`` and the
  *last* ``@`` (or ``%40``) before the query, so a password holding ``@`` leaves no
  fragment; the user name before the first ``:`` is kept (``postgresql://app:***@db/helix``);
- password-like query parameters and ``key=value`` settings (``?password=``, ``&token=``,
  ``api_key=``, ``PGPASSWORD=``, ``"secret": "..."``);
- API keys shaped like OpenAI's (``sk-...``) and bearer or basic credentials.

Pure and dependency-free, so core, db, embedding and the CLI all use this same function.
"""

from __future__ import annotations

import re

MASK = "***"
_SECRET_WORDS = r"(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|apikey|auth|credentials?|sig)"
# scheme://userinfo@rest: the userinfo runs to the last '@' (or '%40', as a URL library writes
# an '@' it took for part of the path) before the query, the fragment, white space or a quote,
# so an unencoded '/' or '@' in a password is hidden too.
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^\s?#'\"<>]*)(?:@|%40)"
)
_QUERY_SECRET = re.compile(
    rf"(?P<lead>[?&;])(?P<key>[\w.-]*{_SECRET_WORDS}[\w.-]*)=(?P<value>[^&#\s'\"]*)", re.I
)
_SETTING_SECRET = re.compile(
    rf"(?P<key>\b[\w.-]*{_SECRET_WORDS}[\w.-]*)(?P<sep>\s*=\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&'\"]+)",
    re.I,
)
_JSON_SECRET = re.compile(
    rf"(?P<key>\"[\w.-]*{_SECRET_WORDS}[\w.-]*\"\s*:\s*)\"(?:[^\"\\]|\\.)*\"", re.I
)
_API_KEY = re.compile(r"\b(?P<prefix>sk|pk|rk)-[A-Za-z0-9_-]{6,}")
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.I)


def redact(value: object) -> str:
    """``str(value)`` with every credential it holds replaced by ``***``."""
    text = value if isinstance(value, str) else str(value)
    if not text:
        return text
    text = _URL_USERINFO.sub(_userinfo, text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['lead']}{m['key']}={MASK}", text)
    text = _JSON_SECRET.sub(lambda m: f'{m["key"]}"{MASK}"', text)
    text = _SETTING_SECRET.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    text = _API_KEY.sub(lambda m: f"{m['prefix']}-{MASK}", text)
    return _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {MASK}", text)


def _userinfo(match: re.Match) -> str:
    info = match["info"]
    user, has_password, _ = info.partition(":")
    if has_password and "@" not in user and "/" not in user:
        return f"{match['scheme']}{user}:{MASK}@"
    return f"{match['scheme']}{MASK}@"
