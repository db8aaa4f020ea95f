"""Online store configurations as typed models parsed from the `--online_store` URL, and the
one password redaction every log line and error uses (pipelines, stores, flex templates).

No Beam import and no backend import: the backends and the registry import this module.
"""

from __future__ import annotations

import os
import urllib.parse
from pydantic import BaseModel, ConfigDict

from transforms.io.online.base import StoreConfigError

_SECRET_QUERY_KEYS = frozenset({"password", "ssl_password"})


def redact_url(url: str) -> str:
    """The URL with any password (in the user info or a `password=` / `ssl_password=` query
    parameter) replaced by ***, safe for logs and errors.

    When in doubt it hides more: an unencoded `/`, `?` or `#` in a password ends the authority
    early and pushes the rest of the password into the path, so if an `@` follows a host part
    that has none, everything up to the last `@` is hidden.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:***@{hostport}"
    elif netloc and "@" in url[url.index(netloc) + len(netloc):]:
        return f"{parts.scheme}://***@{url.rpartition('@')[2]}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***"
        if pair.partition("=")[0].lower() in _SECRET_QUERY_KEYS else pair
        for pair in parts.query.split("&")
    ) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class SqliteConfig(BaseModel):
    """sqlite:///relative/path.db or sqlite:////absolute/path.db."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str

    @classmethod
    def from_url(cls, url: str) -> "SqliteConfig":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise StoreConfigError(f"--online_store: expected sqlite:///path/online.db (got {url!r})")
        return cls(path=url[len("sqlite:///"):])


_URL_OPTIONS = frozenset({"db", "socket_timeout", "socket_connect_timeout", "socket_keepalive",
                          "health_check_interval", "client_name"})
_TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_certfile",
                          "ssl_keyfile", "ssl_password", "ssl_check_hostname", "ssl_min_version",
                          "ssl_ciphers"})
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class RedisConfig(BaseModel):
    """redis://, rediss:// (TLS) or unix:// URL, checked for what redis-py would misread
    silently; `url` holds the password (hand it to redis-py only), `redacted` is safe to print."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scheme: str  # redis | rediss (TLS) | unix
    url: str
    redacted: str

    def __repr__(self) -> str:
        return f"RedisConfig({self.redacted!r})"

    __str__ = __repr__

    @classmethod
    def from_url(cls, url: str) -> "RedisConfig":
        config = cls(scheme=url.split("://", 1)[0].lower(), url=url, redacted=redact_url(url))
        config._check()
        return config

    def _check(self) -> None:
        """Refuse what redis-py would misread silently: a host lost to an unencoded character in the
        password, a misspelt query parameter, TLS options on a plain connection, a missing CA file."""
        url = self.url
        parts = urllib.parse.urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0  # None: redis-py uses 6379
        except ValueError:  # "user:pa/ss@host" reads as host "user", port "pa"
            port_ok = False
        # An "@" outside the user info means a password with an unencoded / ? or # in it: the rest
        # of the URL would be misread, and must not be echoed in an error either.
        if ("@" in url and "@" not in parts.netloc) or (
                parts.scheme in ("redis", "rediss") and not (parts.hostname and port_ok)):
            raise StoreConfigError(f"--online_store: cannot parse Redis URL {self.redacted!r}: expected "
                             "redis[s]://[user:password@]host:port/db; percent-encode @ : / ? # "
                             "in the user name, the password and query values")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        allowed = _URL_OPTIONS | (_TLS_OPTIONS if parts.scheme == "rediss" else frozenset())
        unknown = sorted(set(query) - allowed)
        if unknown:
            hint = " (TLS options need rediss://)" if set(unknown) & _TLS_OPTIONS else ""
            raise StoreConfigError(f"--online_store: unsupported parameter(s) {', '.join(unknown)} in "
                             f"{self.redacted!r}{hint}; supported: {', '.join(sorted(allowed))}")
        reqs = query.get("ssl_cert_reqs", ["required"])[-1]
        if reqs not in ("required", "optional", "none"):
            raise StoreConfigError(
                f"--online_store: ssl_cert_reqs must be required, optional or none (got {reqs!r})")
        for name in _TLS_FILES:
            for path in query.get(name, []):
                if not os.path.isfile(path):
                    raise StoreConfigError(f"--online_store: {name} file not found: {path!r}")


def store_config(url: str) -> "SqliteConfig | RedisConfig":
    """The typed configuration of an online store URL (its scheme picks the backend)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return SqliteConfig.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        return RedisConfig.from_url(url)
    raise StoreConfigError(
        f"--online_store: unsupported URL {redact_url(url)!r} "
        "(expected sqlite:///path/online.db, redis://host:port/db or rediss://host:port/db)"
    )
