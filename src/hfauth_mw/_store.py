"""A local token store on SQLite that keeps only SHA-256 digests of tokens.

Each stored token carries the facts a whoami-v2 answer holds (user, token role,
fine-grained grants, expiry), and :meth:`LocalTokenStore.lookup` answers in the
Hub's exact whoami-v2 shape, so the same parser and the same access rules serve
the Hub and this store.

Security caveats, stated plainly:

* The store never holds a token, only ``sha256(token)``. The digest is not
  salted: that is safe for the tokens :meth:`LocalTokenStore.create_token`
  makes (34 random letters and digits, about 202 bits), but a *guessable*
  token imported with :meth:`LocalTokenStore.add_token` (``"hf_test"``,
  ``"secret"``) can be recovered from the file by trying candidates. Import
  only random tokens outside tests, and keep the file private: it is created
  with mode ``0600`` (never through a symbolic link), and an existing file is
  refused unless it is a regular file, owned by the current user or root, that
  no other user can write and only its group may read, in a directory of the
  user or root that no other user can write (unless it is sticky, as ``/tmp``
  is, or writable only by the user's own private group). The path may be a
  symbolic link to such a file (a Kubernetes Secret, say): it is resolved
  once, and the file checked is the file opened. The files SQLite keeps
  beside it may not be links.
* A file that is not an hfauth-mw store (another application's SQLite
  database, say) is refused, never converted.
* A store that cannot be written here (a read-only mount, a directory the
  process cannot write) is opened read-only: lookups work, changes raise
  :class:`~hfauth_mw.TokenStoreError`. Where SQLite cannot even keep its
  ``-shm`` file beside it, the file is read as immutable, blind to changes a
  writer elsewhere still holds in its ``-wal`` file: lookups then fail with
  :class:`~hfauth_mw.TokenStoreError` until that writer closes the store,
  rather than miss a revocation.
* Expired tokens are still answered by :meth:`LocalTokenStore.lookup`, with
  ``auth.expiresAt`` set: the caller decides with its own clock. A token is
  only gone once revoked.
* Nothing is cached in the process: every call reads the file, so a token
  created or revoked by another process (the CLI, say) counts at the next call.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import sqlite3
import stat
import string
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from ._exceptions import ConfigurationError, TokenStoreError
from ._principal import (
    ORG_ROLES,
    TOKEN_ROLES,
    HubAccountFields,
    OrgMembership,
    Principal,
    ScopedGrant,
    fingerprint_of,
    hub_timestamp,
    principal_as_whoami,
    token_digest,
)
from ._validation import shown

__all__ = [
    "FineGrainedEntry",
    "IssuedToken",
    "LocalTokenStore",
    "OrgGrant",
    "TokenRecord",
]

#: Version of the on-disk schema, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

#: Seconds a connection waits for another writer before giving up.
BUSY_TIMEOUT_SECONDS = 5.0

#: Idle connections kept for reuse; more are opened under load and closed after.
_MAX_IDLE_CONNECTIONS = 8

_TOKEN_ALPHABET = string.ascii_letters + string.digits
_TOKEN_PREFIX = "hf_"  # the public prefix of Hub tokens, not a secret
_TOKEN_RANDOM_LENGTH = 34

_REPO_ENTITY_TYPES = frozenset({"model", "dataset", "space"})
_NAMESPACE_ENTITY_TYPES = frozenset({"user", "org"})
_HEX = re.compile(r"[0-9a-f]+")
_BLANK = re.compile(r"\s")
_MIN_PREFIX = 8

#: The files SQLite keeps beside a store; the same rules apply to them.
_SIDECARS = ("-wal", "-shm", "-journal")
#: How every SQLite database file begins.
_SQLITE_HEADER = b"SQLite format 3\x00"

_T = TypeVar("_T")

#: How a store is opened: read-write, read-only with SQLite's usual locking, or
#: read-only as an immutable file (no ``-shm`` needed, nothing written at all).
_OpenMode = Literal["rw", "ro", "immutable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name      TEXT PRIMARY KEY,
    id        TEXT NOT NULL,
    fullname  TEXT,
    email     TEXT,
    orgs      TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS tokens (
    digest                BLOB PRIMARY KEY,
    user                  TEXT NOT NULL REFERENCES users(name),
    role                  TEXT NOT NULL,
    display_name          TEXT,
    created_at            TEXT NOT NULL,
    expires_at            TEXT,
    can_read_gated_repos  INTEGER NOT NULL DEFAULT 0,
    global_permissions    TEXT NOT NULL DEFAULT '[]',
    fine_grained          TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user);
"""


@dataclass(frozen=True, slots=True)
class OrgGrant:
    """The user's role in an organization: ``no_access``, ``read``,
    ``contributor``, ``write`` or ``admin`` (the Hub's ``roleInOrg``)."""

    name: str
    role: str


@dataclass(frozen=True, slots=True)
class FineGrainedEntry:
    """One ``scoped`` entry of a fine-grained token.

    ``entity_type`` is ``model``, ``dataset``, ``space``, ``user``, ``org``, ...;
    repository names are ``owner/name``. Permission names are opaque strings such
    as ``repo.content.read`` or ``repo.write``.
    """

    entity_type: str
    entity_name: str
    permissions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store shows about a token: its fingerprint and facts, never the token."""

    fingerprint: str
    user: str
    role: str
    display_name: str | None
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just created: ``token`` is shown once and never stored.

    ``repr()`` and ``str()`` leave the token out; read ``.token`` explicitly.
    """

    token: str = field(repr=False)
    record: TokenRecord


def _stable_id(name: str) -> str:
    """A Hub-looking 24-hex id derived from a name (same name, same id)."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:24]


def _entity_id(entity_type: str, name: str) -> str:
    # Users and orgs share one namespace on the Hub, so their ids come from the
    # bare name (a ``user`` entity gets the user's own id); other entities are
    # keyed by type too.
    if entity_type in _NAMESPACE_ENTITY_TYPES:
        return _stable_id(name)
    return _stable_id(f"{entity_type}:{name}")


def _parse_stored_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not text")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("no time zone")
    hub_timestamp(parsed)  # raises OverflowError for years the Hub's format cannot show
    return parsed


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# --- the file ----------------------------------------------------------------------


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _check_file(path: Path, *, store: bool) -> None:
    """Refuse a store file (``store``) or a file SQLite keeps beside it that
    another user could have planted or could change: see the module's caveats.

    The store itself may be a symbolic link to such a file (Kubernetes mounts
    Secrets that way): what counts is the file it points to. The files beside
    it may not be links.
    """
    try:
        info = os.stat(path) if store else os.lstat(path)
    except FileNotFoundError:
        if store:  # the path exists (it was not created): a link to nothing
            raise TokenStoreError(
                f"token store {path} is a symbolic link to a file that does not exist; "
                "give the path of the file itself"
            ) from None
        return
    except OSError as exc:
        raise TokenStoreError(f"cannot read token store {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise TokenStoreError(
            f"{path} beside the token store is a symbolic link, which could point "
            "anywhere; remove it"
        )
    if store:
        _check_sqlite_header(path, info)
    _check_owner_and_mode(path, info)


def _check_sqlite_header(path: Path, info: os.stat_result) -> None:
    """Refuse a non-empty file that does not begin as every SQLite database does
    (``/etc/passwd``, a README): no store, so no ``chmod`` to suggest for it.
    An unreadable file passes here: the owner and mode checks say why."""
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return
    try:
        with open(path, "rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except OSError:
        return
    if head != _SQLITE_HEADER:
        raise TokenStoreError(f"{path} is not an hfauth-mw token store; check the path")


def _check_owner_and_mode(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise TokenStoreError(f"token store {path} is not a regular file; give a file's path")
    # The file to chown or chmod is the one a link resolves to: name it.
    file = os.path.realpath(path)
    named = str(path) if file == str(path) else f"{path} (a link to {file})"
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        raise TokenStoreError(
            f"token store {named} belongs to another user (uid {info.st_uid}); if it is "
            f"yours, run: chown {_user_name(uid)} {file}"
        )
    # Group read is allowed (Kubernetes' fsGroup gives it); writes by others, or
    # reads by everyone, are not.
    if info.st_mode & 0o026:
        raise TokenStoreError(
            f"token store {named} is open to other users (mode {info.st_mode & 0o777:04o}); "
            f"run: chmod 600 {file} (for a Kubernetes Secret: defaultMode 0400)"
        )


def _check_resolved(named: Path, file: Path) -> tuple[int, int]:
    """Check the file a store's path resolved to, following nothing more, and the
    directory that holds it; returns the file's identity (device, inode).

    Another user who can write that directory could swap the file, or plant
    its ``-wal`` or ``-shm``, between any check and SQLite's own opening.
    """
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise TokenStoreError(f"cannot read token store {named}: {exc.strerror}") from None
    if info is None or stat.S_ISLNK(info.st_mode):
        raise TokenStoreError(
            f"token store {named} changed while it was being opened (its link now points "
            "elsewhere); try again"
        )
    _check_owner_and_mode(file, info)
    directory = file.parent
    try:
        held = os.stat(directory)
    except OSError as exc:
        raise TokenStoreError(f"cannot read token store {named}: {exc.strerror}") from None
    uid = os.geteuid()
    if held.st_uid not in (uid, 0):
        raise TokenStoreError(
            f"the directory {directory} of token store {named} belongs to another user "
            f"(uid {held.st_uid}), who could replace the store; move the store to a "
            f"directory of yours, or run: chown {_user_name(uid)} {directory}"
        )
    # Others may write a sticky directory (/tmp) but not rename or remove our files
    # in it; a group of the user's own (umask 002 distributions) holds no one else.
    writers = held.st_mode & (0o002 if _private_group(held.st_gid) else 0o022)
    if writers and not held.st_mode & stat.S_ISVTX:
        raise TokenStoreError(
            f"the directory {directory} of token store {named} can be written by other "
            f"users (mode {held.st_mode & 0o777:04o}), who could replace the store; "
            f"run: chmod go-w {directory}"
        )
    return info.st_dev, info.st_ino


def _remove_if_empty(path: Path, identity: tuple[int, int]) -> None:
    """Remove the empty file this process created at ``path``: only that one."""
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity and info.st_size == 0:
            os.unlink(path)
    except OSError:
        pass  # gone already, or not ours to remove


def _private_group(gid: int) -> bool:
    """Whether ``gid`` is the user's own group, with no member but the user (a
    user private group, as Debian and Ubuntu give every user). Members are
    those it lists and those whose primary group it is, as Debian's OpenSSH
    counts them; a group of several primary members (``users``) is shared."""
    if gid != os.getegid():
        return False
    try:
        members = set(grp.getgrgid(gid).gr_mem)
        members.update(entry.pw_name for entry in pwd.getpwall() if entry.pw_gid == gid)
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return False
    return members == {me}


def _can_write(path: Path) -> bool:
    """Whether this process may write ``path`` (False on a read-only file system,
    also for root)."""
    return os.access(path, os.W_OK)


def _open_mode(path: Path) -> _OpenMode:
    """How to open an existing store: read-write when the file and its directory
    (where SQLite puts ``-wal`` and ``-shm``) can be written, else read-only."""
    directory = path.parent
    if _can_write(path) and _can_write(directory):
        return "rw"
    if _can_write(directory) or all(
        Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm")
    ):
        return "ro"
    # WAL readers need a -shm file; without one, and with no way to create it,
    # SQLite can only read the file as immutable.
    return "immutable"


# --- validation --------------------------------------------------------------------


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string")
    if "/" in value or _BLANK.search(value) or not value.isprintable():
        raise ConfigurationError(
            f"{what} {value!r} must not contain '/', whitespace or control characters"
        )
    return value


def _check_org(org: object) -> OrgGrant:
    if not isinstance(org, OrgGrant):
        raise ConfigurationError("orgs must hold OrgGrant values")
    _check_name(org.name, "organization name")
    if org.role not in ORG_ROLES:
        raise ConfigurationError(
            f"role {org.role!r} in organization {org.name!r} is not one of {', '.join(ORG_ROLES)}"
        )
    return org


def _check_permissions(permissions: object, where: str) -> tuple[str, ...]:
    if isinstance(permissions, str) or not isinstance(permissions, Sequence):
        raise ConfigurationError(f"{where}: permissions must be a sequence of strings")
    for permission in permissions:
        if not isinstance(permission, str) or not permission or _BLANK.search(permission):
            raise ConfigurationError(
                f"{where}: permission {permission!r} must be a non-empty string without spaces"
            )
    return tuple(permissions)


def _check_entry(entry: object) -> FineGrainedEntry:
    if not isinstance(entry, FineGrainedEntry):
        raise ConfigurationError("fine_grained must hold FineGrainedEntry values")
    kind, name = entry.entity_type, entry.entity_name
    if not isinstance(kind, str) or not kind or _BLANK.search(kind):
        raise ConfigurationError(f"fine-grained entity type {kind!r} is not a valid type")
    if not isinstance(name, str) or not name or _BLANK.search(name):
        raise ConfigurationError(f"fine-grained {kind} entity needs a name without whitespace")
    if kind in _REPO_ENTITY_TYPES:
        owner, _, repo = name.partition("/")
        if not owner or not repo or "/" in repo:
            raise ConfigurationError(
                f"fine-grained {kind} entity {name!r} must be named 'owner/name'"
            )
    elif kind in _NAMESPACE_ENTITY_TYPES:
        _check_name(name, f"fine-grained {kind} entity name")
    where = f"fine-grained entry {kind} {name!r}"
    permissions = _check_permissions(entry.permissions, where)
    if not permissions:
        raise ConfigurationError(f"{where} needs at least one permission")
    return FineGrainedEntry(kind, name, permissions)


def _check_time(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{what} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(
            f"{what} must be timezone-aware (for example datetime.now(UTC) + timedelta(days=30))"
        )
    utc = value.astimezone(UTC)
    # Kept to the millisecond, the precision of the Hub's timestamps.
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def _check_optional_text(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a string or None")
    # Shown in `token list` and in logs: a newline or an escape sequence there
    # would forge a line or rewrite the terminal.
    if value is not None and not value.isprintable():
        raise ConfigurationError(f"{what} {value!r} must not contain control characters")
    return value


def _check_token_text(token: object) -> str:
    # The message never quotes the token: it may be a real secret.
    if not isinstance(token, str) or not token:
        raise ConfigurationError("the token to import must be a non-empty string")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigurationError(
            "the token to import must not contain whitespace or control characters"
        )
    return token


@dataclass(frozen=True, slots=True)
class _TokenFacts:
    user: str
    role: str
    orgs: tuple[OrgGrant, ...] | None
    fine_grained: tuple[FineGrainedEntry, ...]
    global_permissions: tuple[str, ...]
    can_read_gated_repos: bool
    expires_at: datetime | None
    display_name: str | None
    fullname: str | None
    email: str | None


def _validate(
    *,
    user: str,
    role: str,
    orgs: Sequence[OrgGrant],
    fine_grained: Sequence[FineGrainedEntry],
    global_permissions: Sequence[str],
    can_read_gated_repos: bool,
    expires_at: datetime | None,
    display_name: str | None,
    fullname: str | None,
    email: str | None,
) -> _TokenFacts:
    _check_name(user, "user name")
    if role not in TOKEN_ROLES:
        raise ConfigurationError(f"token role {role!r} is not one of {', '.join(TOKEN_ROLES)}")
    org_grants = tuple(_check_org(org) for org in orgs)
    if len({org.name for org in org_grants}) != len(org_grants):
        raise ConfigurationError("orgs lists the same organization twice")
    entries = tuple(_check_entry(entry) for entry in fine_grained)
    global_perms = _check_permissions(global_permissions, "global_permissions")
    if not isinstance(can_read_gated_repos, bool):
        raise ConfigurationError("can_read_gated_repos must be True or False")
    if role != "fineGrained":
        if entries or global_perms or can_read_gated_repos:
            raise ConfigurationError(
                f"fine_grained, global_permissions and can_read_gated_repos need "
                f"role='fineGrained', not role={role!r}"
            )
    elif not entries and not global_perms:
        raise ConfigurationError(
            "a fineGrained token needs at least one fine_grained entry or global permission"
        )
    return _TokenFacts(
        user=user,
        role=role,
        # An empty sequence means "keep the user's organizations as they are".
        orgs=org_grants or None,
        fine_grained=entries,
        global_permissions=global_perms,
        can_read_gated_repos=can_read_gated_repos,
        expires_at=_check_time(expires_at, "expires_at"),
        display_name=_check_optional_text(display_name, "display_name"),
        fullname=_check_optional_text(fullname, "fullname"),
        email=_check_optional_text(email, "email"),
    )


class _BadColumn(Exception):
    """A stored value that does not decode; names the column, never the value."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _column(row: sqlite3.Row, column: str, decode: Callable[[Any], _T]) -> _T:
    try:
        return decode(row[column])
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        RecursionError,
    ):
        raise _BadColumn(column) from None


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("not text")
    return value


def _optional_text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("not text")
    return value


def _fingerprint_prefix(fingerprint: object) -> str:
    if not isinstance(fingerprint, str):
        raise ConfigurationError("fingerprint must be a string of hex digits")
    prefix = fingerprint.strip().lower()
    if len(prefix) < _MIN_PREFIX or len(prefix) > 64 or not _HEX.fullmatch(prefix):
        raise ConfigurationError(
            f"fingerprint {shown(fingerprint)} must be {_MIN_PREFIX} to 64 hexadecimal digits"
        )
    return prefix


def _flag(value: object) -> bool:
    # Written as 0 or 1; a hand-edited 'false' would be truthy, and this flag grants.
    if type(value) is not int or value not in (0, 1):
        raise TypeError("not 0 or 1")
    return value == 1


def _optional_time(value: object) -> datetime | None:
    return _parse_stored_time(value) if value else None


def _json_list(value: object) -> list[Any]:
    if not isinstance(value, str):
        raise TypeError("not text")
    decoded = json.loads(value)
    if not isinstance(decoded, list):
        raise TypeError("not a list")
    return decoded


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("not a list of strings")
    return value


def _org_list(value: object) -> list[dict[str, str]]:
    orgs = _json_list(value)
    for org in orgs:
        _text(org["name"])
        _text(org["role"])
    return orgs


def _entry_list(value: object) -> list[dict[str, Any]]:
    entries = _json_list(value)
    for entry in entries:
        _text(entry["type"])
        _text(entry["name"])
        _strings(entry["permissions"])
    return entries


#: The rows a TokenRecord is read from (a query, to complete with its WHERE).
_SELECT_RECORDS = "SELECT digest, user, role, display_name, created_at, expires_at FROM tokens"


def _record(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        fingerprint=_column(row, "digest", _fingerprint),
        user=_column(row, "user", _text),
        role=_column(row, "role", _text),
        display_name=_column(row, "display_name", _optional_text),
        created_at=_column(row, "created_at", _parse_stored_time),
        expires_at=_column(row, "expires_at", _optional_time),
    )


def _fingerprint(value: object) -> str:
    if not isinstance(value, bytes) or len(value) != hashlib.sha256().digest_size:
        raise TypeError("not a SHA-256 digest")
    return fingerprint_of(value)


def _row_fingerprint(row: sqlite3.Row) -> str:
    try:
        return _fingerprint(row["digest"])
    except TypeError:
        return "(unreadable digest)"


class LocalTokenStore:
    """Tokens kept as SHA-256 digests in a SQLite file, answered in whoami-v2 shape.

    Thread-safe: each call borrows a connection from a small pool, so no
    connection is used by two threads at once. Several processes may share one
    file (WAL journal, busy timeout); nothing is cached, so a revocation made
    elsewhere takes effect at the next :meth:`lookup`. WAL needs a local file
    system: do not put the file on NFS or SMB shares.

    Errors of SQLite become :class:`~hfauth_mw.TokenStoreError` naming the file;
    no message ever holds a token.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        # What the path names is asked again on every read-only lookup (to follow
        # a retargeted link): relative to where we started, whatever chdir() since.
        self._named = Path(os.path.abspath(path))
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        try:
            # Private from the start: the digests of guessable tokens are secrets
            # too. O_EXCL|O_NOFOLLOW: never through a planted symbolic link.
            fd = os.open(
                self._path,
                os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except FileExistsError:
            created = None  # checked below, with whatever SQLite keeps beside it
        except OSError as exc:
            raise TokenStoreError(
                f"cannot create token store {self._path}: {exc.strerror}"
            ) from None
        else:
            info = os.fstat(fd)
            created = info.st_dev, info.st_ino
            os.close(fd)
        try:
            self._file, self._identity = self._checked_file()
        except TokenStoreError:
            if created is not None:  # refused (its directory, say): leave no empty file
                _remove_if_empty(self._path, created)
            raise
        self._mode = _open_mode(self._file)
        self._generation = 0
        try:
            with self._connection() as conn:
                self._create_schema(conn)
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The SQLite file of this store."""
        return self._path

    def __repr__(self) -> str:
        return f"LocalTokenStore({str(self._path)!r})"

    # --- connections ------------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        """True when the store could not be opened for writing (a read-only
        mount, say): lookups work, changes raise TokenStoreError."""
        return self._mode != "rw"

    def _connect(
        self, file: Path, identity: tuple[int, int], mode: _OpenMode
    ) -> sqlite3.Connection:
        target: str | Path = file
        if mode != "rw":
            target = f"file:{quote(str(file))}?mode=ro"
            if mode == "immutable":
                self._refuse_unseen_changes(file)
                target += "&immutable=1"
        conn = sqlite3.connect(
            target,
            uri=mode != "rw",
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,  # autocommit; writes use explicit BEGIN IMMEDIATE
            check_same_thread=False,  # the pool hands a connection to one thread at a time
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            # The file SQLite opened is still the file that was checked.
            try:
                info = os.stat(file)
            except OSError:
                info = None
            if info is None or (info.st_dev, info.st_ino) != identity:
                raise TokenStoreError(
                    f"token store {self._path} was replaced while it was being opened; try again"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def _checked_file(self) -> tuple[Path, tuple[int, int]]:
        """The file the store's path names, checked with the files beside it, and
        its identity (device, inode).

        The path is resolved once, and SQLite is given the file it resolved to:
        a link retargeted after the check cannot hand SQLite another file.
        """
        _check_file(self._named, store=True)
        # SQLite keeps its -wal and -shm beside the file itself: those are the
        # files to check, and the directory to write.
        file = Path(os.path.realpath(self._named))
        identity = _check_resolved(self._path, file)
        for suffix in _SIDECARS:
            _check_file(Path(f"{file}{suffix}"), store=False)
        return file, identity

    def _follow_link(self) -> None:
        """A read-only store whose link now points elsewhere (Kubernetes updated
        the Secret) reads the new file from now on, once it passes the checks;
        connections to the old one are closed, so none reads it any longer."""
        if os.path.realpath(self._named) == str(self._file):
            return
        with self._lock:
            if os.path.realpath(self._named) == str(self._file):
                return  # another thread followed it first
            file, identity = self._checked_file()
            # Opened read-only, it stays read-only, wherever the link points.
            mode: _OpenMode = "immutable" if _open_mode(file) == "immutable" else "ro"
            try:
                conn = self._connect(file, identity, mode)
                try:
                    version = self._schema_version(conn)
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise TokenStoreError(f"token store {self._path}: {exc}") from None
            if version != SCHEMA_VERSION:
                raise TokenStoreError(
                    f"token store {self._path} now points to {file}, which is empty; "
                    "create tokens in it where it is writable"
                )
            self._file, self._identity, self._mode = file, identity, mode
            self._generation += 1
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _refuse_unseen_changes(self, file: Path) -> None:
        """An immutable reader never reads the -wal file, where a process writing
        the store elsewhere keeps its latest changes (a revocation, say): with
        such changes pending, answering from the main file alone could accept a
        revoked token, so refuse (503) until the writer checkpoints."""
        try:
            pending = os.stat(f"{file}-wal").st_size > 0
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TokenStoreError(f"cannot read token store {self._path}: {exc.strerror}") from None
        if pending:
            raise TokenStoreError(
                f"token store {self._path} is read-only here and another process has changes "
                "in its -wal file that this process cannot read; stop that writer (it "
                "checkpoints on close) or mount the store's directory writable"
            )

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise TokenStoreError(f"token store {self._path} is closed")
        if self._mode != "rw":
            self._follow_link()
        with self._lock:
            if self._closed:
                raise TokenStoreError(f"token store {self._path} is closed")
            conn = self._idle.pop() if self._idle else None
            file, identity, mode, generation = (
                self._file,
                self._identity,
                self._mode,
                self._generation,
            )
        broken = False
        try:
            if conn is None:
                conn = self._connect(file, identity, mode)
            yield conn
        except sqlite3.Error as exc:
            # SQLite messages name tables and columns, never bound values, so
            # they cannot carry a token (only digests are ever bound anyway).
            broken = True
            raise TokenStoreError(f"token store {self._path}: {exc}") from None
        finally:
            if conn is not None:
                self._release(conn, broken=broken, generation=generation)

    def _release(self, conn: sqlite3.Connection, *, broken: bool, generation: int) -> None:
        with self._lock:
            keep = (
                not broken
                and not conn.in_transaction
                and not self._closed
                and generation == self._generation  # not a connection to a file left behind
                # An immutable connection never looks for changes: a fresh one per
                # call still reads what is in the file now.
                and self._mode != "immutable"
                and len(self._idle) < _MAX_IDLE_CONNECTIONS
            )
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._mode != "rw":
            raise TokenStoreError(
                f"token store {self._path} is read-only here (its file or directory "
                "cannot be written); make changes where it is writable"
            )
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        """The store's schema version, 0 for an empty file; refuses any other file."""
        if not conn.in_transaction:
            # One snapshot: a process creating the store meanwhile commits its
            # tables and version together, and must not be seen half-done.
            conn.execute("BEGIN")
            try:
                return self._schema_version(conn)
            finally:
                conn.execute("COMMIT")
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TokenStoreError(
                f"token store {self._path} has schema version {version}; "
                f"this hfauth-mw reads version {SCHEMA_VERSION} (upgrade hfauth-mw)"
            )
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        ours = version == SCHEMA_VERSION and {"users", "tokens"} <= names
        if not ours and (names or version != 0):
            # Someone else's database (a mistyped path): never write to it.
            raise TokenStoreError(
                f"{self._path} is not an hfauth-mw token store (it holds other data) and "
                "was left unchanged; check the path, or name a new file to create a store"
            )
        return version

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = self._schema_version(conn)
        if self._mode != "rw":
            if version != SCHEMA_VERSION:
                raise TokenStoreError(
                    f"token store {self._path} is empty and read-only here; "
                    "create tokens in it where it is writable"
                )
            return
        self._use_wal(conn)
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created the schema meanwhile.
            if self._schema_version(conn) == SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        # Switching needs the file to itself, and the busy timeout does not
        # cover it: another process opening a new store at the same moment
        # gets "database is locked". Retried briefly, as a busy handler would.
        for attempt in range(50):
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    return
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.002 * (attempt + 1))

    def close(self) -> None:
        """Close the store's connections. Later calls raise TokenStoreError."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> LocalTokenStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------

    def create_token(
        self,
        *,
        user: str,
        role: str = "read",
        orgs: Sequence[OrgGrant] = (),
        fine_grained: Sequence[FineGrainedEntry] = (),
        global_permissions: Sequence[str] = (),
        can_read_gated_repos: bool = False,
        expires_at: datetime | None = None,
        display_name: str | None = None,
        fullname: str | None = None,
        email: str | None = None,
    ) -> IssuedToken:
        """Make a new random token (``hf_`` + 34 letters/digits) and store its digest.

        The token is in the returned :class:`IssuedToken` and nowhere else: show
        it once. ``orgs``, ``fullname`` and ``email`` describe the *user* and are
        shared by all their tokens: a non-empty ``orgs`` replaces the user's
        organizations, an empty one keeps them (see :meth:`set_orgs` to clear);
        ``fullname``/``email`` of ``None`` keep what is stored.
        """
        facts = _validate(
            user=user,
            role=role,
            orgs=orgs,
            fine_grained=fine_grained,
            global_permissions=global_permissions,
            can_read_gated_repos=can_read_gated_repos,
            expires_at=expires_at,
            display_name=display_name,
            fullname=fullname,
            email=email,
        )
        token = _TOKEN_PREFIX + "".join(
            secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_RANDOM_LENGTH)
        )
        return IssuedToken(token=token, record=self._insert(token_digest(token), facts))

    def add_token(
        self,
        token: str,
        *,
        user: str,
        role: str = "read",
        orgs: Sequence[OrgGrant] = (),
        fine_grained: Sequence[FineGrainedEntry] = (),
        global_permissions: Sequence[str] = (),
        can_read_gated_repos: bool = False,
        expires_at: datetime | None = None,
        display_name: str | None = None,
        fullname: str | None = None,
        email: str | None = None,
    ) -> TokenRecord:
        """Store the digest of a token you already have (tests, fixed demo seeds).

        Same options as :meth:`create_token`. The token is taken exactly as
        given (never trimmed or case-folded). Raises TokenStoreError when the
        token is already in the store.

        Caveat: a guessable token's digest can be reversed by trying guesses;
        import only random tokens outside tests.
        """
        facts = _validate(
            user=user,
            role=role,
            orgs=orgs,
            fine_grained=fine_grained,
            global_permissions=global_permissions,
            can_read_gated_repos=can_read_gated_repos,
            expires_at=expires_at,
            display_name=display_name,
            fullname=fullname,
            email=email,
        )
        return self._insert(token_digest(_check_token_text(token)), facts)

    def _insert(self, digest: bytes, facts: _TokenFacts) -> TokenRecord:
        created_at = _now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM tokens WHERE digest = ?", (digest,)).fetchone():
                raise TokenStoreError(
                    f"token store {self._path} already holds the token with fingerprint "
                    f"{fingerprint_of(digest)}"
                )
            self._upsert_user(conn, facts.user, facts.orgs, facts.fullname, facts.email)
            conn.execute(
                "INSERT INTO tokens (digest, user, role, display_name, created_at, expires_at,"
                " can_read_gated_repos, global_permissions, fine_grained)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest,
                    facts.user,
                    facts.role,
                    facts.display_name,
                    created_at.isoformat(),
                    facts.expires_at.isoformat() if facts.expires_at else None,
                    int(facts.can_read_gated_repos),
                    json.dumps(list(facts.global_permissions)),
                    json.dumps(
                        [
                            {
                                "type": entry.entity_type,
                                "name": entry.entity_name,
                                "permissions": list(entry.permissions),
                            }
                            for entry in facts.fine_grained
                        ]
                    ),
                ),
            )
        return TokenRecord(
            fingerprint=fingerprint_of(digest),
            user=facts.user,
            role=facts.role,
            display_name=facts.display_name,
            created_at=created_at,
            expires_at=facts.expires_at,
        )

    @staticmethod
    def _upsert_user(
        conn: sqlite3.Connection,
        user: str,
        orgs: tuple[OrgGrant, ...] | None,
        fullname: str | None,
        email: str | None,
    ) -> None:
        orgs_json = (
            json.dumps([{"name": org.name, "role": org.role} for org in orgs])
            if orgs is not None
            else None
        )
        conn.execute(
            "INSERT INTO users (name, id, fullname, email, orgs) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET"
            " fullname = coalesce(excluded.fullname, users.fullname),"
            " email = coalesce(excluded.email, users.email),"
            " orgs = CASE WHEN ? IS NULL THEN users.orgs ELSE excluded.orgs END",
            (user, _stable_id(user), fullname, email, orgs_json or "[]", orgs_json),
        )

    def set_orgs(self, user: str, orgs: Sequence[OrgGrant]) -> None:
        """Replace the organizations of ``user`` (an empty sequence clears them).

        The user gets a row even without tokens; their tokens see the change at
        the next :meth:`lookup`.
        """
        _check_name(user, "user name")
        grants = tuple(_check_org(org) for org in orgs)
        if len({org.name for org in grants}) != len(grants):
            raise ConfigurationError("orgs lists the same organization twice")
        with self._write() as conn:
            self._upsert_user(conn, user, grants, None, None)

    def revoke(self, fingerprint: str) -> int:
        """Delete the token whose digest starts with ``fingerprint`` (at least 8 hex digits).

        Returns the number of tokens deleted (0 or 1). A prefix matching several
        tokens raises TokenStoreError and deletes nothing. An entry that does not
        parse is deleted all the same.
        """
        prefix = _fingerprint_prefix(fingerprint)
        with self._write() as conn:
            digest = self._digest_starting(conn, prefix)
            if digest is None:
                return 0
            return conn.execute("DELETE FROM tokens WHERE digest = ?", (digest,)).rowcount

    def find_token(self, fingerprint: str) -> TokenRecord | None:
        """The token whose digest starts with ``fingerprint`` (at least 8 hex digits),
        or None. Raises TokenStoreError when several match or its entry does not parse."""
        prefix = _fingerprint_prefix(fingerprint)
        with self._connection() as conn:
            digest = self._digest_starting(conn, prefix)
            if digest is None:
                return None
            row = conn.execute(_SELECT_RECORDS + " WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else self._decode(_record, row)

    def _digest_starting(self, conn: sqlite3.Connection, prefix: str) -> bytes | None:
        rows = conn.execute(
            "SELECT digest FROM tokens WHERE substr(lower(hex(digest)), 1, ?) = ? LIMIT 2",
            (len(prefix), prefix),
        ).fetchall()
        if len(rows) > 1:
            raise TokenStoreError(
                f"fingerprint {prefix!r} matches several tokens in {self._path}; give more digits"
            )
        return bytes(rows[0][0]) if rows else None

    # --- reading ----------------------------------------------------------------------

    def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        """The stored tokens (all, or ``user``'s), oldest first. No token text."""
        query = _SELECT_RECORDS + " WHERE ? IS NULL OR user = ? ORDER BY created_at, rowid"
        with self._connection() as conn:
            rows = conn.execute(query, (user, user)).fetchall()
        return [self._decode(_record, row) for row in rows]

    def _decode(self, decode: Callable[[sqlite3.Row], _T], row: sqlite3.Row) -> _T:
        try:
            return decode(row)
        except _BadColumn as exc:
            fingerprint = _row_fingerprint(row)
            raise TokenStoreError(
                f"token store {self._path}: the entry of token {fingerprint} is malformed "
                f"({exc.column} does not parse); revoke it and create a new token"
            ) from None

    def lookup(self, digest: bytes) -> dict[str, Any] | None:
        """The whoami-v2 answer for the token with this SHA-256 digest, or None.

        Expired tokens are answered too, with ``auth.expiresAt`` in the past:
        the caller must compare it with its own clock.
        """
        if not isinstance(digest, bytes) or len(digest) != hashlib.sha256().digest_size:
            raise ConfigurationError("lookup needs a 32-byte SHA-256 digest")
        with self._connection() as conn:
            row = conn.execute(
                "SELECT t.*, u.id AS user_id, u.fullname, u.email, u.orgs"
                " FROM tokens AS t JOIN users AS u ON u.name = t.user"
                " WHERE t.digest = ?",
                (digest,),
            ).fetchone()
        # The index search above compares digests, not tokens. Its timing can at
        # most reveal how many leading bytes of some stored digest an attacker's
        # candidate digest shares, and knowing digest bytes does not help find a
        # token that hashes to them (SHA-256 preimage resistance). The final
        # equality is still checked in constant time.
        if row is None or not hmac.compare_digest(bytes(row["digest"]), digest):
            return None
        return self._decode(self._answer, row)

    @staticmethod
    def _answer(row: sqlite3.Row) -> dict[str, Any]:
        """The row as the Hub answers whoami-v2 (the one writer, in ``_principal``)."""
        user = _column(row, "user", _text)
        role = _column(row, "role", _text)
        user_id = _column(row, "user_id", _text)
        fine_grained = role == "fineGrained"
        principal = Principal(
            name=user,
            id=user_id,
            fullname=_column(row, "fullname", _optional_text) or user,
            email=_column(row, "email", _optional_text),
            token_role=role,
            # The Hub always names a token; an unnamed local one gets a stable
            # name, with nothing of the token in it (the answer may be cached in
            # Redis, where even a fingerprint could be matched against a leak).
            token_name=_column(row, "display_name", _optional_text)
            or f"unnamed token created {_column(row, 'created_at', _text)}",
            orgs=tuple(
                OrgMembership(org["name"], org["role"], id=_stable_id(org["name"]))
                for org in _column(row, "orgs", _org_list)
            ),
            scoped=tuple(
                ScopedGrant(
                    entry["type"],
                    entry["name"],
                    frozenset(entry["permissions"]),
                    entity_id=_entity_id(entry["type"], entry["name"]),
                )
                for entry in _column(row, "fine_grained", _entry_list)
            )
            if fine_grained
            else (),
            global_permissions=_column(
                row, "global_permissions", lambda value: frozenset(_strings(_json_list(value)))
            )
            if fine_grained
            else frozenset(),
            can_read_gated_repos=fine_grained and _column(row, "can_read_gated_repos", _flag),
            expires_at=_column(row, "expires_at", _optional_time),
        )
        account = HubAccountFields(
            token_created_at=_column(row, "created_at", _parse_stored_time),
            avatar_url=f"/avatars/{user_id}.svg",
        )
        return principal_as_whoami(principal, account)
