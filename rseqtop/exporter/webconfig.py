"""The exporter-toolkit web configuration file (--web.config.file).

Same YAML format as node_exporter and every Go exporter built on
prometheus/exporter-toolkit::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
      client_ca_file: ca.crt
      min_version: TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...   # bcrypt (htpasswd -nBC 10 alice)

Unknown keys are errors (the toolkit parses strictly too). Relative paths are
relative to the file's directory. The file is read once at start-up.
bcrypt hashes are verified with the `bcrypt` package (pyca), which releases
the GIL while it hashes: checks run in parallel and a stream of wrong
passwords does not queue the right ones behind a lock. Successful
verifications are cached by a salted digest so that repeated scrapes do not
pay bcrypt's cost each time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rseqtop.errors import UserError

try:
    import bcrypt
except ImportError:  # a declared dependency; load() says so in one line when users are configured
    bcrypt = None

log = logging.getLogger("rseqtop.export")

BCRYPT_RE = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
CLIENT_AUTH = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
            "cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"}
TLS_IGNORED = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
HTTP_KEYS = {"http2", "headers"}


class WebConfigError(UserError):
    def __init__(self, path, message: str):
        super().__init__(f"web config {path}: {message}", exit_code=2)


@dataclass
class WebConfig:
    ssl_context: Optional[ssl.SSLContext] = None
    users: dict = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict = field(default_factory=dict)
    client_allowed_sans: tuple = ()

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None


BCRYPT_MAX_PASSWORD = 72  # bytes; bcrypt (libcrypt, Go's x/crypto, htpasswd) ignores the rest
UNKNOWN_USER_HASH = "$2b$10$" + "." * 53  # checked for unknown users, to spend the same time


def bcrypt_check(password: str, hashed: str) -> bool:
    """True when password matches the bcrypt hash. Thread-safe and parallel
    (the GIL is released while hashing). Passwords longer than 72 bytes are
    truncated, as libcrypt and Go exporters do; a hash the library refuses
    is a mismatch, never an exception."""
    try:
        return bcrypt.checkpw(password.encode("utf-8")[:BCRYPT_MAX_PASSWORD], hashed.encode("ascii"))
    except ValueError:
        return False


def _usable_hash(hashed: str) -> bool:
    """Whether the library accepts the hash's version and salt, checked at
    cost 4 (about a millisecond) rather than the hash's own cost."""
    m = BCRYPT_RE.match(hashed)
    if not m:
        return False
    probe = hashed[:m.start(1)] + "04" + hashed[m.end(1):]
    try:
        bcrypt.checkpw(b"", probe.encode("ascii"))
    except ValueError:
        return False
    return True


class Authenticator:
    """HTTP basic auth against bcrypt hashes, with a cache of successes."""

    def __init__(self, users: dict):
        self.users = dict(users)
        self._key = os.urandom(32)
        self._ok: dict = {}
        self._lock = threading.Lock()

    def check(self, header: Optional[str]) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        import base64
        import binascii

        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        if not sep:
            return False
        hashed = self.users.get(user)
        digest = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if self._ok.get(digest) == hashed and hashed is not None:
                return True
        if hashed is None:
            # spend comparable time so that unknown users are not distinguishable
            bcrypt_check(password, UNKNOWN_USER_HASH)
            return False
        if not bcrypt_check(password, hashed):
            return False
        with self._lock:
            if len(self._ok) > 1024:
                self._ok.clear()
            self._ok[digest] = hashed
        return True


def _check_keys(path, section: str, data, allowed: set) -> None:
    if not isinstance(data, dict):
        raise WebConfigError(path, f"{section} must be a mapping")
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise WebConfigError(path, f"unknown field {unknown[0]!r} in {section} "
                             f"(allowed: {', '.join(sorted(allowed))})")


def load(path) -> WebConfig:
    path = Path(path)
    try:
        import yaml
    except ImportError:
        raise UserError("--web.config.file needs PyYAML: pip install pyyaml (or apt-get install python3-yaml)",
                        exit_code=2) from None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise WebConfigError(path, err.strerror or str(err)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise WebConfigError(path, f"not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        return WebConfig()
    _check_keys(path, "the top level", data, TOP_KEYS)
    cfg = WebConfig()
    base = path.parent

    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(path, "basic_auth_users must map user names to bcrypt hashes")
    if users and bcrypt is None:
        raise UserError("basic_auth_users needs the bcrypt package: pip install bcrypt "
                        "(or apt-get install python3-bcrypt)", exit_code=2)
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not _usable_hash(hashed):
            raise WebConfigError(path, f"basic_auth_users: the hash for user {user!r} is not a bcrypt hash "
                                 f"($2y$10$ + 53 characters); make one with: htpasswd -nBC 10 {user}")
        cfg.users[str(user)] = hashed

    http = data.get("http_server_config") or {}
    _check_keys(path, "http_server_config", http, HTTP_KEYS)
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(path, "http_server_config.headers must be a mapping")
    for k, v in headers.items():
        if not re.match(r"^[A-Za-z0-9-]+$", str(k)) or any(c in str(v) for c in "\r\n"):
            raise WebConfigError(path, f"http_server_config.headers: bad header {k!r}")
        cfg.headers[str(k)] = str(v)

    tls = data.get("tls_server_config")
    if tls is not None:
        _check_keys(path, "tls_server_config", tls, TLS_KEYS)
        cfg.ssl_context = _ssl_context(path, base, tls)
        sans = tls.get("client_allowed_sans") or ()
        cfg.client_allowed_sans = tuple(map(str, sans))
    return cfg


def _file(path, base: Path, tls: dict, key: str) -> Optional[str]:
    value = tls.get(key)
    if value in (None, ""):
        return None
    p = Path(str(value))
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise WebConfigError(path, f"tls_server_config.{key}: {p} does not exist")
    return str(p)


def _ssl_context(path, base: Path, tls: dict) -> ssl.SSLContext:
    cert = _file(path, base, tls, "cert_file")
    key = _file(path, base, tls, "key_file")
    if not cert:
        raise WebConfigError(path, "tls_server_config: missing cert_file")
    if not key:
        raise WebConfigError(path, "tls_server_config: missing key_file")
    auth = str(tls.get("client_auth_type") or "")
    if auth in UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(path, f"client_auth_type {auth} (client certificates without verification) is not "
                             f"supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(path, f"invalid client_auth_type {auth!r} (use NoClientCert, "
                             f"VerifyClientCertIfGiven or RequireAndVerifyClientCert)")
    ca = _file(path, base, tls, "client_ca_file")
    if ca and CLIENT_AUTH[auth] == ssl.CERT_NONE:
        raise WebConfigError(path, "client_ca_file is set without a client_auth_type that verifies clients")
    if CLIENT_AUTH[auth] != ssl.CERT_NONE and not ca:
        raise WebConfigError(path, f"client_auth_type {auth} needs client_ca_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for k in ("min_version", "max_version"):
        v = tls.get(k)
        if v in (None, ""):
            continue
        if v not in TLS_VERSIONS:
            raise WebConfigError(path, f"tls_server_config.{k}: unknown TLS version {v!r} (TLS10..TLS13)")
        try:
            setattr(ctx, "minimum_version" if k == "min_version" else "maximum_version", TLS_VERSIONS[v])
        except (ValueError, ssl.SSLError) as err:
            raise WebConfigError(path, f"tls_server_config.{k}: {err}") from None
    for k in sorted(TLS_IGNORED & set(tls)):
        log.warning("web config %s: tls_server_config.%s is ignored (Python's ssl picks suites)", path, k)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise WebConfigError(path, f"cannot load cert_file/key_file: {err}") from None
    ctx.verify_mode = CLIENT_AUTH[auth]
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as err:
            raise WebConfigError(path, f"cannot load client_ca_file: {err}") from None
    return ctx
