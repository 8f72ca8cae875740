"""Tests of the local SQLite token store."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from checkout import git_ignores
from hfauth_mw import _store
from hfauth_mw._exceptions import ConfigurationError, TokenStoreError
from hfauth_mw._principal import fingerprint_of, principal_from_whoami, token_digest
from hfauth_mw._store import (
    FineGrainedEntry,
    IssuedToken,
    LocalTokenStore,
    OrgGrant,
    TokenRecord,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[LocalTokenStore]:
    with LocalTokenStore(db_path) as token_store:
        yield token_store


def _ambiguous_pair() -> tuple[str, str]:
    """Two tokens whose digests share their first 8 hex digits (a birthday search)."""
    seen: dict[str, str] = {}
    index = 0
    while True:
        token = f"hf_collide_{index}"
        prefix = token_digest(token).hex()[:8]
        if prefix in seen:
            return seen[prefix], token
        seen[prefix] = token
        index += 1


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"user": "alice"},
            {"name": "alice", "token_role": "read", "orgs": (), "scoped": ()},
            id="read-minimal",
        ),
        pytest.param(
            {
                "user": "bob",
                "role": "write",
                "orgs": [OrgGrant("acme", "write"), OrgGrant("labs", "read")],
                "display_name": "ci",
                "fullname": "Bob B.",
                "email": "bob@example.org",
            },
            {
                "name": "bob",
                "token_role": "write",
                "token_name": "ci",
                "fullname": "Bob B.",
                "email": "bob@example.org",
                "org_roles": {"acme": "write", "labs": "read"},
            },
            id="write-with-orgs",
        ),
        pytest.param(
            {
                "user": "carol",
                "role": "fineGrained",
                "fine_grained": [
                    FineGrainedEntry("model", "acme/sentiment", ("repo.content.read",)),
                    FineGrainedEntry("user", "carol", ("repo.content.read", "repo.write")),
                ],
                "global_permissions": ["inference.serverless.write"],
                "can_read_gated_repos": True,
            },
            {
                "name": "carol",
                "token_role": "fineGrained",
                "can_read_gated_repos": True,
                "global_permissions": frozenset({"inference.serverless.write"}),
                "grants": {
                    ("model", "acme/sentiment"): frozenset({"repo.content.read"}),
                    ("user", "carol"): frozenset({"repo.content.read", "repo.write"}),
                },
            },
            id="fine-grained",
        ),
        pytest.param(
            {"user": "dave", "role": "fineGrained", "global_permissions": ["discussion.write"]},
            {"name": "dave", "token_role": "fineGrained", "grants": {}},
            id="fine-grained-global-only",
        ),
    ],
)
def test_create_lookup_round_trip(
    store: LocalTokenStore, kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    issued = store.create_token(**kwargs)
    assert re.fullmatch(r"hf_[A-Za-z0-9]{34}", issued.token)
    digest = token_digest(issued.token)
    assert issued.record.fingerprint == fingerprint_of(digest)

    answer = store.lookup(digest)
    assert answer is not None
    principal = principal_from_whoami(answer, fingerprint=issued.record.fingerprint)

    org_roles = expected.pop("org_roles", None)
    grants = expected.pop("grants", None)
    for attribute, value in expected.items():
        assert getattr(principal, attribute) == value, attribute
    if org_roles is not None:
        assert {org.name: org.role for org in principal.orgs} == org_roles
    if grants is not None:
        assert {
            (grant.entity_type, grant.entity_name): grant.permissions for grant in principal.scoped
        } == grants
    assert principal.id == answer["id"]
    assert re.fullmatch(r"[0-9a-f]{24}", answer["id"])
    assert principal.auth_type == "access_token"
    assert principal.expires_at is None


def test_an_unnamed_token_is_named_without_anything_of_the_token(store: LocalTokenStore) -> None:
    """The answer may be cached in Redis: not even the token's fingerprint in it."""
    token = "hf_unnamed_" + "q" * 26
    store.add_token(token, user="alice", role="read")
    answer = store.lookup(token_digest(token))
    assert answer is not None
    name = answer["auth"]["accessToken"]["displayName"]
    assert name.startswith("unnamed token created ")
    digest = hashlib.sha256(token.encode()).hexdigest()
    text = json.dumps(answer)
    assert token not in text
    assert all(digest[:size] not in text for size in (8, 12, 16))


def test_classic_answer_shape(store: LocalTokenStore) -> None:
    store.add_token("hf_classic", user="alice", role="write", display_name="laptop")
    answer = store.lookup(token_digest("hf_classic"))
    assert answer is not None
    assert answer["type"] == "user"
    assert answer["name"] == "alice"
    assert answer["orgs"] == []
    assert "email" not in answer
    auth = answer["auth"]
    assert set(auth) == {"type", "accessToken"}
    assert auth["type"] == "access_token"
    assert set(auth["accessToken"]) == {"displayName", "role", "createdAt"}
    assert auth["accessToken"]["displayName"] == "laptop"
    assert auth["accessToken"]["role"] == "write"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", auth["accessToken"]["createdAt"])


def test_fine_grained_answer_shape(store: LocalTokenStore) -> None:
    store.add_token(
        "hf_fine",
        user="alice",
        role="fineGrained",
        orgs=[OrgGrant("acme", "write")],
        fine_grained=[
            FineGrainedEntry("model", "acme/sentiment", ("repo.content.read",)),
            FineGrainedEntry("user", "alice", ("repo.content.read", "repo.write")),
        ],
        global_permissions=["inference.serverless.write", "discussion.write"],
        can_read_gated_repos=True,
        display_name="prod-inference",
    )
    answer = store.lookup(token_digest("hf_fine"))
    assert answer is not None
    assert answer["orgs"][0]["name"] == "acme"
    assert answer["orgs"][0]["roleInOrg"] == "write"
    assert answer["orgs"][0]["type"] == "org"
    access_token = answer["auth"]["accessToken"]
    assert access_token["role"] == "fineGrained"
    assert access_token["fineGrained"] == {
        "canReadGatedRepos": True,
        "global": ["discussion.write", "inference.serverless.write"],  # a set: sorted
        "scoped": [
            {
                "entity": {
                    "_id": access_token["fineGrained"]["scoped"][0]["entity"]["_id"],
                    "type": "model",
                    "name": "acme/sentiment",
                },
                "permissions": ["repo.content.read"],
            },
            {
                # A user entity carries the user's own id, as on the Hub.
                "entity": {"_id": answer["id"], "type": "user", "name": "alice"},
                "permissions": ["repo.content.read", "repo.write"],
            },
        ],
    }


@pytest.mark.parametrize(
    "offset",
    [pytest.param(timedelta(days=-1), id="expired"), pytest.param(timedelta(days=30), id="future")],
)
def test_expiry_is_answered_not_enforced(store: LocalTokenStore, offset: timedelta) -> None:
    expires_at = datetime.now(UTC).replace(microsecond=0) + offset
    record = store.add_token("hf_expiring", user="alice", expires_at=expires_at)
    assert record.expires_at == expires_at
    answer = store.lookup(token_digest("hf_expiring"))
    assert answer is not None
    assert answer["auth"]["expiresAt"].endswith("Z")
    assert principal_from_whoami(answer).expires_at == expires_at
    assert store.list_tokens()[0].expires_at == expires_at


def test_unknown_digest(store: LocalTokenStore) -> None:
    store.add_token("hf_known", user="alice")
    assert store.lookup(token_digest("hf_unknown")) is None


def test_lookup_rejects_non_digest(store: LocalTokenStore) -> None:
    with pytest.raises(ConfigurationError):
        store.lookup(b"short")


# --- users ---------------------------------------------------------------------------


def test_orgs_are_per_user_replaced_or_kept(store: LocalTokenStore) -> None:
    store.add_token("hf_one", user="alice", orgs=[OrgGrant("acme", "write")], fullname="Alice")
    store.add_token("hf_two", user="alice")  # no orgs: keeps them
    for token in ("hf_one", "hf_two"):
        answer = store.lookup(token_digest(token))
        assert answer is not None
        assert [org["name"] for org in answer["orgs"]] == ["acme"]
        assert answer["fullname"] == "Alice"

    store.add_token("hf_three", user="alice", orgs=[OrgGrant("labs", "admin")])
    answer = store.lookup(token_digest("hf_one"))
    assert answer is not None
    assert [(org["name"], org["roleInOrg"]) for org in answer["orgs"]] == [("labs", "admin")]

    store.set_orgs("alice", [])
    answer = store.lookup(token_digest("hf_two"))
    assert answer is not None
    assert answer["orgs"] == []


# --- list and revoke -----------------------------------------------------------------


def test_list_shows_no_token_text(store: LocalTokenStore) -> None:
    alice = store.create_token(user="alice", display_name="a")
    bob = store.create_token(user="bob", role="write")
    records = store.list_tokens()
    assert [record.user for record in records] == ["alice", "bob"]
    assert all(isinstance(record, TokenRecord) for record in records)
    text = repr(records) + str(records)
    for issued in (alice, bob):
        assert issued.token not in text
        assert issued.token[3:] not in text
    assert [record.fingerprint for record in store.list_tokens("bob")] == [bob.record.fingerprint]
    assert store.list_tokens("nobody") == []


def test_issued_token_repr_hides_token(store: LocalTokenStore) -> None:
    issued = store.create_token(user="alice")
    assert isinstance(issued, IssuedToken)
    for text in (repr(issued), str(issued), f"{issued}"):
        assert issued.token not in text
        assert issued.record.fingerprint in text


@pytest.mark.parametrize(
    "make_prefix",
    [
        pytest.param(lambda digest_hex: digest_hex[:8], id="8-hex"),
        pytest.param(lambda digest_hex: digest_hex[:12], id="fingerprint"),
        pytest.param(lambda digest_hex: digest_hex, id="full-digest"),
        pytest.param(lambda digest_hex: digest_hex[:10].upper(), id="upper-case"),
    ],
)
def test_revoke_by_prefix(store: LocalTokenStore, make_prefix: Any) -> None:
    keep = store.create_token(user="alice")
    gone = store.create_token(user="alice")
    assert store.revoke(make_prefix(token_digest(gone.token).hex())) == 1
    assert store.lookup(token_digest(gone.token)) is None
    assert store.lookup(token_digest(keep.token)) is not None
    assert [record.fingerprint for record in store.list_tokens()] == [keep.record.fingerprint]
    assert store.revoke(make_prefix(token_digest(gone.token).hex())) == 0


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("abc", id="too-short"),
        pytest.param("xyz12345", id="not-hex"),
        pytest.param("a" * 65, id="too-long"),
        pytest.param("", id="empty"),
    ],
)
def test_revoke_rejects_bad_prefix(store: LocalTokenStore, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="hexadecimal"):
        store.revoke(prefix)


def test_revoke_ambiguous_prefix_revokes_nothing(store: LocalTokenStore) -> None:
    first, second = _ambiguous_pair()
    store.add_token(first, user="alice")
    store.add_token(second, user="alice")
    prefix = token_digest(first).hex()[:8]
    with pytest.raises(TokenStoreError, match="several tokens") as caught:
        store.revoke(prefix)
    assert first not in str(caught.value)
    assert second not in str(caught.value)
    assert store.lookup(token_digest(first)) is not None
    assert store.lookup(token_digest(second)) is not None
    assert store.revoke(token_digest(first).hex()[:16]) == 1
    assert store.lookup(token_digest(second)) is not None


# --- several processes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [pytest.param("revoke", id="revoke"), pytest.param("create", id="create")],
)
def test_other_instance_sees_changes_immediately(
    store: LocalTokenStore, db_path: Path, change: str
) -> None:
    other = LocalTokenStore(db_path)  # stands for another process on the same file
    try:
        existing = store.create_token(user="alice")
        # Warm up the other instance's connection before the change.
        assert other.lookup(token_digest(existing.token)) is not None
        if change == "revoke":
            assert store.revoke(existing.record.fingerprint) == 1
            assert other.lookup(token_digest(existing.token)) is None
            assert other.list_tokens() == []
        else:
            fresh = store.create_token(user="bob", role="write")
            answer = other.lookup(token_digest(fresh.token))
            assert answer is not None
            assert answer["name"] == "bob"
            assert len(other.list_tokens()) == 2
    finally:
        other.close()


# --- secrecy -------------------------------------------------------------------------


def test_file_never_holds_token_text(store: LocalTokenStore, db_path: Path) -> None:
    issued = [store.create_token(user=f"user{index}", role="write") for index in range(5)]
    store.add_token("hf_imported_secret_value", user="alice", display_name="imported")
    store.revoke(issued[0].record.fingerprint)
    tokens = [item.token for item in issued] + ["hf_imported_secret_value"]

    def blob() -> bytes:
        return b"".join(path.read_bytes() for path in db_path.parent.glob(db_path.name + "*"))

    while_open = blob()
    store.close()
    after_close = blob()
    for data in (while_open, after_close):
        assert token_digest(tokens[1]) in data  # the store really wrote its digests
        for token in tokens:
            assert token.encode() not in data
            assert token[3:].encode() not in data
    assert db_path.stat().st_mode & 0o077 == 0


def test_duplicate_token_is_refused_without_echoing_it(store: LocalTokenStore) -> None:
    store.add_token("hf_duplicate_secret", user="alice")
    with pytest.raises(TokenStoreError, match="already holds") as caught:
        store.add_token("hf_duplicate_secret", user="bob")
    assert "hf_duplicate_secret" not in str(caught.value)
    assert str(store.path) in str(caught.value)
    assert [record.user for record in store.list_tokens()] == ["alice"]


# --- validation ----------------------------------------------------------------------

_NAIVE = datetime(2030, 1, 1)  # deliberately naive


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"user": ""}, "user name", id="empty-user"),
        pytest.param({"user": "acme/alice"}, "user name", id="slash-in-user"),
        pytest.param({"user": "al ice"}, "user name", id="space-in-user"),
        pytest.param({"user": "alice", "role": "admin"}, "token role", id="unknown-role"),
        pytest.param(
            {"user": "alice", "orgs": [OrgGrant("acme", "owner")]}, "acme", id="bad-org-role"
        ),
        pytest.param(
            {"user": "alice", "orgs": [OrgGrant("acme", "read"), OrgGrant("acme", "write")]},
            "twice",
            id="duplicate-org",
        ),
        pytest.param(
            {
                "user": "alice",
                "role": "write",
                "fine_grained": [FineGrainedEntry("model", "a/b", ("repo.write",))],
            },
            "fineGrained",
            id="entries-on-classic-token",
        ),
        pytest.param(
            {"user": "alice", "global_permissions": ["discussion.write"]},
            "fineGrained",
            id="global-on-classic-token",
        ),
        pytest.param(
            {"user": "alice", "can_read_gated_repos": True},
            "fineGrained",
            id="gated-on-classic-token",
        ),
        pytest.param(
            {"user": "alice", "role": "fineGrained"},
            "at least one",
            id="empty-fine-grained",
        ),
        pytest.param(
            {
                "user": "alice",
                "role": "fineGrained",
                "fine_grained": [FineGrainedEntry("model", "no-owner", ("repo.write",))],
            },
            "owner/name",
            id="repo-without-owner",
        ),
        pytest.param(
            {
                "user": "alice",
                "role": "fineGrained",
                "fine_grained": [FineGrainedEntry("model", "a/b", ())],
            },
            "at least one permission",
            id="entry-without-permissions",
        ),
        pytest.param(
            {
                "user": "alice",
                "role": "fineGrained",
                "fine_grained": [FineGrainedEntry("model", "a/b", "repo.write")],  # type: ignore[arg-type]
            },
            "sequence of strings",
            id="permissions-as-string",
        ),
        pytest.param({"user": "alice", "expires_at": _NAIVE}, "timezone-aware", id="naive-expiry"),
    ],
)
def test_validation_errors(store: LocalTokenStore, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        store.create_token(**kwargs)
    with pytest.raises(ConfigurationError, match=message) as caught:
        store.add_token("hf_validation_secret", **kwargs)
    assert "hf_validation_secret" not in str(caught.value)
    assert store.list_tokens() == []


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("hf_with space", id="space"),
        pytest.param("hf_new\nline", id="newline"),
    ],
)
def test_add_token_rejects_unusable_tokens(store: LocalTokenStore, token: str) -> None:
    with pytest.raises(ConfigurationError, match="token to import") as caught:
        store.add_token(token, user="alice")
    if token:
        assert token not in str(caught.value)


# --- errors and lifecycle ------------------------------------------------------------


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("missing-directory", id="missing-directory"),
        pytest.param("not-a-database", id="not-a-database"),
    ],
)
def test_sqlite_errors_become_token_store_errors(tmp_path: Path, setup: str) -> None:
    if setup == "missing-directory":
        path = tmp_path / "nowhere" / "tokens.sqlite3"
    else:
        path = tmp_path / "garbage.sqlite3"
        path.write_bytes(b"this is not a database file, just some text" * 100)
        path.chmod(0o600)
    with pytest.raises(TokenStoreError) as caught:
        LocalTokenStore(path)
    assert str(path) in str(caught.value)


def test_closed_store_refuses_calls(db_path: Path) -> None:
    token_store = LocalTokenStore(db_path)
    token_store.close()
    with pytest.raises(TokenStoreError, match="closed"):
        token_store.list_tokens()
    token_store.close()  # idempotent


def test_reopen_keeps_tokens(db_path: Path) -> None:
    with LocalTokenStore(db_path) as first:
        record = first.add_token("hf_persist", user="alice", role="write")
    with LocalTokenStore(db_path) as second:
        assert second.list_tokens() == [record]


# --- threads -------------------------------------------------------------------------


def test_concurrent_lookups_from_eight_threads(store: LocalTokenStore) -> None:
    issued = [store.create_token(user=f"user{index}", role="write") for index in range(8)]
    start = threading.Barrier(8)

    def work(index: int) -> int:
        start.wait()
        hits = 0
        for round_number in range(50):
            item = issued[(index + round_number) % len(issued)]
            answer = store.lookup(token_digest(item.token))
            assert answer is not None
            assert answer["name"] == item.record.user
            assert store.lookup(token_digest(item.token + "x")) is None
            hits += 1
        return hits

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [50] * 8


def test_concurrent_writes_and_reads(store: LocalTokenStore) -> None:
    start = threading.Barrier(8)

    def work(index: int) -> str:
        start.wait()
        issued = store.create_token(user=f"user{index}")
        assert store.lookup(token_digest(issued.token)) is not None
        return issued.record.fingerprint

    with ThreadPoolExecutor(max_workers=8) as pool:
        fingerprints = set(pool.map(work, range(8)))
    assert {record.fingerprint for record in store.list_tokens()} == fingerprints


# --- the file: who may have planted or changed it --------------------------------------


def _sqlite_file(path: Path, *statements: str, mode: int = 0o600) -> None:
    """A real SQLite database made outside hfauth-mw (another application's, say)."""
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    path.chmod(mode)


def _snapshot(path: Path) -> tuple[str, int, list[str]]:
    conn = sqlite3.connect(path)
    try:
        return (
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA user_version").fetchone()[0],
            sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master")),
        )
    finally:
        conn.close()


def test_new_store_file_is_private(db_path: Path) -> None:
    LocalTokenStore(db_path).close()
    assert db_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param("dangling-symlink", "is a symbolic link to a file", id="dangling-symlink"),
        pytest.param("symlink-to-open-store", "run: chmod 600 ", id="symlink-to-open-store"),
        pytest.param(
            "symlink-beside", "-wal beside the token store is a symbolic link", id="symlink-beside"
        ),
        # SQLite keeps -wal beside the file a link points to: checked there.
        pytest.param(
            "symlink-to-store-with-open-wal", "-wal is open to other users", id="link-target-wal"
        ),
        pytest.param("world-writable", "run: chmod 600 ", id="world-writable"),
        pytest.param("group-writable", "run: chmod 600 ", id="group-writable"),
        pytest.param("other-readable", "run: chmod 600 ", id="other-readable"),
        pytest.param(
            "other-owner",
            "belongs to another user (uid 54321); if it is yours, run: chown ",
            id="other-owner",
        ),
        pytest.param("directory", "is not a regular file", id="directory"),
        pytest.param("fifo", "is not a regular file", id="fifo"),
        pytest.param("open-wal-beside", "-wal is open to other users", id="open-wal-beside"),
    ],
)
def test_unsafe_store_file_is_refused(
    tmp_path: Path, db_path: Path, setup: str, message: str
) -> None:
    target = tmp_path / "elsewhere" / "planted.sqlite3"
    target.parent.mkdir()
    if setup == "dangling-symlink":
        db_path.symlink_to(target)
    elif setup == "symlink-to-open-store":
        LocalTokenStore(target).close()
        target.chmod(0o644)
        db_path.symlink_to(target)
    elif setup == "symlink-to-store-with-open-wal":
        LocalTokenStore(target).close()
        wal = Path(f"{target}-wal")
        wal.touch()
        wal.chmod(0o666)
        db_path.symlink_to(target)
    elif setup == "symlink-beside":
        LocalTokenStore(db_path).close()
        Path(f"{db_path}-wal").symlink_to(target)
    elif setup == "directory":
        db_path.mkdir()
    elif setup == "fifo":
        os.mkfifo(db_path, 0o600)
    else:
        LocalTokenStore(db_path).close()
        if setup == "open-wal-beside":
            wal = Path(f"{db_path}-wal")
            wal.touch()
            wal.chmod(0o666)
        elif setup == "other-owner":
            os.chown(db_path, 54321, -1)
        else:
            modes = {
                "world-writable": 0o666,
                "group-writable": 0o620,
                "other-readable": 0o604,
            }
            db_path.chmod(modes[setup])
    with pytest.raises(TokenStoreError) as caught:
        LocalTokenStore(db_path)
    # The file to fix: beside the file the link points to, for the link's -wal.
    assert str(target if setup == "symlink-to-store-with-open-wal" else db_path) in str(
        caught.value
    )
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    if setup == "dangling-symlink":
        assert not target.exists()  # nothing was created where the link points


@pytest.mark.parametrize(
    ("content", "mode", "link"),
    [
        pytest.param(b"root:x:0:0:root:/root:/bin/sh\n", 0o644, False, id="a-text-file"),
        pytest.param(b"# hfauth-mw\n\nA README.\n", 0o644, True, id="a-link-to-a-text-file"),
        pytest.param(b"hello\n", 0o600, False, id="shorter-than-a-header"),
        pytest.param(b"SQLite format 2\x00" + bytes(100), 0o666, False, id="not-sqlite-3"),
    ],
)
def test_a_file_that_is_not_sqlite_is_refused_without_chmod(
    tmp_path: Path, db_path: Path, content: bytes, mode: int, link: bool
) -> None:
    """Whatever file --store names (/etc/passwd, a README), never "chmod 600" it."""
    target = tmp_path / "README.md" if link else db_path
    target.write_bytes(content)
    target.chmod(mode)
    if link:
        db_path.symlink_to(target)
    with pytest.raises(TokenStoreError) as caught:
        LocalTokenStore(db_path)
    assert str(caught.value) == f"{db_path} is not an hfauth-mw token store; check the path"
    assert target.read_bytes() == content
    assert target.stat().st_mode & 0o777 == mode
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted({db_path.name, target.name})


@pytest.mark.parametrize(
    ("mode", "owner", "fix"),
    [
        pytest.param(0o644, None, "run: chmod 600 {target}", id="open-mode"),
        pytest.param(0o600, 54321, "if it is yours, run: chown {user} {target}", id="other-owner"),
    ],
)
def test_the_fix_for_a_linked_store_names_the_file_it_resolves_to(
    tmp_path: Path, db_path: Path, mode: int, owner: int | None, fix: str
) -> None:
    target = tmp_path / "..data" / "tokens.sqlite3"
    target.parent.mkdir()
    LocalTokenStore(target).close()
    target.chmod(mode)
    if owner is not None:
        os.chown(target, owner, -1)
    db_path.symlink_to(target)
    with pytest.raises(TokenStoreError) as caught:
        LocalTokenStore(db_path)
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert f"token store {db_path} (a link to {target})" in str(caught.value)
    assert fix.format(target=target, user=user) in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "link"),
    [
        pytest.param(0o600, False, id="private"),
        pytest.param(0o400, False, id="read-only-private"),
        pytest.param(0o640, False, id="group-readable"),
        # Kubernetes mounts a Secret as symbolic links into a hidden directory.
        pytest.param(0o440, True, id="kubernetes-secret-link"),
    ],
)
def test_safe_store_file_is_accepted(tmp_path: Path, db_path: Path, mode: int, link: bool) -> None:
    target = tmp_path / "..data" / "tokens.sqlite3" if link else db_path
    target.parent.mkdir(exist_ok=True)
    with LocalTokenStore(target) as store:
        issued = store.create_token(user="alice", role="read")
    target.chmod(mode)
    if link:
        db_path.symlink_to(target)
    with LocalTokenStore(db_path) as store:
        assert store.lookup(hashlib.sha256(issued.token.encode()).digest()) is not None


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        pytest.param(
            (
                "CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT)",
                "INSERT INTO users (login) VALUES ('x')",
            ),
            "is not an hfauth-mw token store",
            id="other-app-version-0",
        ),
        pytest.param(
            ("CREATE TABLE accounts (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 1"),
            "is not an hfauth-mw token store",
            id="other-app-version-1",
        ),
        pytest.param(
            ("CREATE VIEW answer AS SELECT 42",),
            "is not an hfauth-mw token store",
            id="view-only",
        ),
        pytest.param(
            ("PRAGMA user_version = -3",),
            "is not an hfauth-mw token store",
            id="empty-negative-version",
        ),
        pytest.param(
            ("CREATE TABLE tokens (x)", "PRAGMA user_version = 2"),
            "has schema version 2",
            id="newer-store",
        ),
    ],
)
def test_other_database_is_refused_and_left_unchanged(
    db_path: Path, statements: tuple[str, ...], message: str
) -> None:
    _sqlite_file(db_path, *statements)
    before = _snapshot(db_path)
    with pytest.raises(TokenStoreError, match=message) as caught:
        LocalTokenStore(db_path)
    assert str(db_path) in str(caught.value)
    assert _snapshot(db_path) == before
    assert before[0] == "delete"  # not switched to WAL either


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("empty-file", id="empty-file"),
        pytest.param("empty-database", id="empty-database"),
    ],
)
def test_empty_file_becomes_a_store(db_path: Path, setup: str) -> None:
    if setup == "empty-file":
        db_path.touch(mode=0o600)
    else:
        _sqlite_file(db_path, "PRAGMA user_version = 0")
    with LocalTokenStore(db_path) as token_store:
        issued = token_store.create_token(user="alice")
        assert token_store.lookup(token_digest(issued.token)) is not None
    assert _snapshot(db_path) == (
        "wal",
        1,
        [
            "sqlite_autoindex_tokens_1",
            "sqlite_autoindex_users_1",
            "tokens",
            "tokens_by_user",
            "users",
        ],
    )


# --- a store that cannot be written here ------------------------------------------------


def test_read_only_store_refuses_while_a_writer_holds_unread_changes(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An immutable reader cannot see a revocation still in the writer's -wal:
    it must refuse (503) rather than answer from the main file alone."""
    with LocalTokenStore(db_path) as writer:
        issued = writer.create_token(user="alice", role="read")
    digest = token_digest(issued.token)
    with monkeypatch.context() as patch:  # this process alone cannot write there
        patch.setattr(_store, "_can_write", lambda path: path != db_path.parent)
        reader = LocalTokenStore(db_path)
    assert reader._mode == "immutable"
    assert reader.lookup(digest) is not None
    writer = LocalTokenStore(db_path)  # another process, where the store is writable
    try:
        writer.revoke(issued.record.fingerprint)  # kept in -wal while the writer is open
        with pytest.raises(TokenStoreError, match="changes in its -wal file"):
            reader.lookup(digest)
    finally:
        writer.close()  # the last connection checkpoints the -wal into the file
    assert reader.lookup(digest) is None
    reader.close()


@pytest.mark.parametrize(
    ("writable", "mode"),
    [
        pytest.param(lambda path: False, "immutable", id="read-only-mount"),
        # The file cannot be written, its directory can: SQLite's usual locking,
        # and pooled connections, which must not keep reading the old version.
        pytest.param(lambda path: path.is_dir(), "ro", id="read-only-file"),
    ],
)
def test_read_only_secret_volume_follows_its_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writable: Any, mode: str
) -> None:
    """A Kubernetes Secret volume: store -> ..data/store, ..data -> ..<version>.
    An update writes a new version and swaps ..data: the revocation it brings
    counts at once, even while the old version is still on disk."""
    token = "hf_" + "a" * 34
    versions = []
    for revoked in (False, True):
        built = tmp_path / f"build-{len(versions)}.sqlite3"
        with LocalTokenStore(built) as store:
            store.add_token(token, user="alice", role="read")
            if revoked:
                store.revoke(fingerprint_of(token_digest(token)))
        versions.append(built)
    volume = tmp_path / "secret"
    volume.mkdir()
    for number, built in enumerate(versions):
        (volume / f"..v{number}").mkdir()
        shutil.copy(built, volume / f"..v{number}" / "store")
        (volume / f"..v{number}" / "store").chmod(0o400)
    (volume / "..data").symlink_to("..v0")
    (volume / "store").symlink_to("..data/store")
    monkeypatch.setattr(_store, "_can_write", writable)
    reader = LocalTokenStore(volume / "store")
    assert reader._mode == mode
    for _ in range(3):  # pooled connections too
        assert reader.lookup(token_digest(token)) is not None
    (volume / "..data_tmp").symlink_to("..v1")
    (volume / "..data_tmp").rename(volume / "..data")  # the kubelet's atomic swap
    assert reader.lookup(token_digest(token)) is None
    shutil.rmtree(volume / "..v0")
    assert reader.lookup(token_digest(token)) is None
    reader.close()


def test_a_secret_update_to_a_file_that_is_no_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "secret"
    (volume / "..v0").mkdir(parents=True)
    (volume / "..v1").mkdir()
    with LocalTokenStore(volume / "..v0" / "store") as store:
        issued = store.create_token(user="alice")
    _sqlite_file(volume / "..v1" / "store", "CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    (volume / "..data").symlink_to("..v0")
    (volume / "store").symlink_to("..data/store")
    monkeypatch.setattr(_store, "_can_write", lambda path: False)
    reader = LocalTokenStore(volume / "store")
    assert reader.lookup(token_digest(issued.token)) is not None
    (volume / "..data_tmp").symlink_to("..v1")
    (volume / "..data_tmp").rename(volume / "..data")

    with pytest.raises(TokenStoreError, match="is not an hfauth-mw token store"):
        reader.lookup(token_digest(issued.token))
    reader.close()


def test_a_link_retargeted_while_the_store_opens_cannot_hand_over_another_file(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link is checked, then retargeted by another user to a file of theirs
    before SQLite opens it: the file checked must be the file opened."""
    safe, planted = tmp_path / "safe", tmp_path / "planted"
    for directory in (safe, planted):
        directory.mkdir()
        LocalTokenStore(directory / "store").close()
    (planted / "store").chmod(0o644)  # refused if named directly
    db_path.symlink_to(safe / "store")
    check_file = _store._check_file

    def check_then_swap(path: Path, *, store: bool) -> None:
        check_file(path, store=store)
        if path == db_path:  # the other user's move, right after the check
            db_path.unlink()
            db_path.symlink_to(planted / "store")

    monkeypatch.setattr(_store, "_check_file", check_then_swap)

    with pytest.raises(TokenStoreError) as caught:
        LocalTokenStore(db_path)
    assert f"token store {planted / 'store'} is open to other users" in str(caught.value)


def test_a_store_replaced_after_its_check_is_not_read(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is replaced between the last check and SQLite's opening of it."""
    LocalTokenStore(db_path).close()
    other = tmp_path / "other.sqlite3"
    LocalTokenStore(other).close()
    check_resolved = _store._check_resolved

    def check_then_replace(named: Path, file: Path) -> tuple[int, int]:
        identity = check_resolved(named, file)
        other.replace(file)
        return identity

    monkeypatch.setattr(_store, "_check_resolved", check_then_replace)

    with pytest.raises(TokenStoreError, match="was replaced while it was being opened"):
        LocalTokenStore(db_path)


@pytest.mark.parametrize(
    ("directory_mode", "owner", "group", "refused"),
    [
        pytest.param(0o700, None, None, None, id="private"),
        pytest.param(0o755, None, None, None, id="readable"),
        pytest.param(0o1777, None, None, None, id="sticky-like-tmp"),
        # umask 002 distributions: the user's own group, with no other member.
        pytest.param(0o775, None, None, None, id="own-private-group-writable"),
        pytest.param(
            0o777, None, None, "can be written by other users (mode 0777)", id="world-writable"
        ),
        pytest.param(
            0o770, None, 54321, "can be written by other users (mode 0770)", id="group-writable"
        ),
        pytest.param(0o755, 54321, None, "belongs to another user (uid 54321)", id="other-owner"),
    ],
)
def test_the_directory_holding_the_store_must_be_safe(
    tmp_path: Path,
    directory_mode: int,
    owner: int | None,
    group: int | None,
    refused: str | None,
) -> None:
    """Who can write the directory can swap the store, or plant its -wal, at any time."""
    if directory_mode == 0o775 and not _store._private_group(os.getegid()):
        pytest.skip("this machine's group of the current user has other members")
    directory = tmp_path / "stores"
    directory.mkdir()
    LocalTokenStore(directory / "tokens.sqlite3").close()
    directory.chmod(directory_mode)
    os.chown(directory, -1 if owner is None else owner, -1 if group is None else group)
    link = tmp_path / "link.sqlite3"
    link.symlink_to(directory / "tokens.sqlite3")

    for path in (directory / "tokens.sqlite3", link):  # named directly or through a link
        if refused is None:
            LocalTokenStore(path).close()
            continue
        with pytest.raises(TokenStoreError) as caught:
            LocalTokenStore(path)
        assert refused in str(caught.value)
        assert f"the directory {directory} of token store {path}" in str(caught.value)


@pytest.mark.parametrize(
    ("directory_mode", "owner", "present"),
    [
        pytest.param(0o777, None, False, id="world-writable-new-file"),
        pytest.param(0o755, 54321, False, id="other-owner-new-file"),
        pytest.param(0o777, None, True, id="world-writable-existing-empty-file-kept"),
    ],
)
def test_a_refused_directory_is_left_as_it_was(
    tmp_path: Path, directory_mode: int, owner: int | None, present: bool
) -> None:
    """The store file is created before its directory can be checked: removed again."""
    directory = tmp_path / "stores"
    directory.mkdir()
    if present:
        (directory / "tokens.sqlite3").touch(mode=0o600)
    directory.chmod(directory_mode)
    os.chown(directory, -1 if owner is None else owner, -1)

    with pytest.raises(TokenStoreError, match="the directory"):
        LocalTokenStore(directory / "tokens.sqlite3")

    assert [path.name for path in directory.iterdir()] == (["tokens.sqlite3"] if present else [])


@pytest.mark.parametrize(
    ("listed", "primary_of", "private"),
    [
        pytest.param([], ["me"], True, id="own-group-alone"),
        pytest.param(["me"], ["me"], True, id="listed-too"),
        pytest.param([], ["me", "other"], False, id="another-primary-member"),
        pytest.param(["other"], ["me"], False, id="another-listed-member"),
        pytest.param([], [], False, id="no-member"),
    ],
)
def test_a_private_group_has_no_member_but_the_user(
    monkeypatch: pytest.MonkeyPatch, listed: list[str], primary_of: list[str], private: bool
) -> None:
    """Members are those the group lists and those whose primary group it is
    (openSUSE's "users" is every user's): either kind could swap the store."""
    gid = os.getegid()
    accounts = [
        SimpleNamespace(pw_name=name, pw_gid=gid, pw_uid=os.geteuid() if name == "me" else 4242)
        for name in primary_of
    ]
    monkeypatch.setattr(_store.grp, "getgrgid", lambda g: SimpleNamespace(gr_mem=listed))
    monkeypatch.setattr(_store.pwd, "getpwall", lambda: accounts)
    monkeypatch.setattr(_store.pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="me"))

    assert _store._private_group(gid) is private


def test_a_read_only_store_named_by_a_relative_path_survives_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following a retargeted link re-reads the path on each lookup: relative to
    where the store was opened, not to wherever the process went since."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with LocalTokenStore(tmp_path / "a" / "store.sqlite3") as writer:
        issued = writer.create_token(user="alice")
    LocalTokenStore(tmp_path / "b" / "store.sqlite3").close()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setattr(_store, "_can_write", lambda path: path.is_dir())  # read-only file
    reader = LocalTokenStore("store.sqlite3")
    assert reader._mode == "ro"

    monkeypatch.chdir(tmp_path / "b")

    assert reader.lookup(token_digest(issued.token)) is not None
    reader.close()


def _create_and_list(path: str) -> str:
    try:
        with LocalTokenStore(path) as store:
            store.list_tokens()
    except TokenStoreError as exc:
        return str(exc)
    return "ok"


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    paths = [str(tmp_path / f"s{round_}.sqlite3") for round_ in range(25)]
    with context.Pool(8) as pool:
        outcomes = pool.map(_create_and_list, [path for path in paths for _ in range(8)])
    assert set(outcomes) == {"ok"}


@pytest.mark.parametrize(
    ("unwritable", "mode"),
    [
        # Root may write anything but a read-only mount, so a real read-only case
        # needs a mount (see test_read_only_mount); these go through the one probe.
        pytest.param({"directory"}, "immutable", id="read-only-directory"),
        pytest.param({"directory", "file"}, "immutable", id="read-only-mount"),
        pytest.param({"file"}, "ro", id="read-only-file"),
    ],
)
def test_unwritable_store_opens_read_only(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, unwritable: set[str], mode: str
) -> None:
    with LocalTokenStore(db_path) as writer:
        issued = writer.create_token(user="alice", role="write")
    content = db_path.read_bytes()
    names = {"directory": db_path.parent, "file": db_path}
    blocked = {names[name] for name in unwritable}
    monkeypatch.setattr(_store, "_can_write", lambda path: path not in blocked)

    with LocalTokenStore(db_path) as reader:
        assert reader.read_only
        assert reader._mode == mode
        for _ in range(3):  # pooled or not, every call answers
            answer = reader.lookup(token_digest(issued.token))
            assert answer is not None
            assert answer["name"] == "alice"
        assert reader.list_tokens() == [issued.record]
        for change in (
            lambda: reader.create_token(user="bob"),
            lambda: reader.revoke(issued.record.fingerprint),
            lambda: reader.set_orgs("alice", []),
        ):
            with pytest.raises(TokenStoreError, match="is read-only here") as caught:
                change()
            assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == content
    if mode == "immutable":
        assert sorted(path.name for path in db_path.parent.iterdir()) == [db_path.name]


def test_empty_store_that_cannot_be_written_is_refused(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path.touch(mode=0o600)
    monkeypatch.setattr(_store, "_can_write", lambda path: False)
    with pytest.raises(TokenStoreError, match="is empty and read-only here"):
        LocalTokenStore(db_path)


_READ_ONLY_MOUNT = """
set -e
mount -t tmpfs -o mode=0700 none "$STORE_DIR"
"$PYTHON" -c "$CREATE" > "$TOKEN_FILE"
mount -o remount,ro "$STORE_DIR"
"$PYTHON" -c "$CHECK"
"""

_CREATE = """
from hfauth_mw._store import LocalTokenStore
with LocalTokenStore("{store}") as store:
    print(store.create_token(user="alice").token)
"""

_CHECK = """
from hfauth_mw._exceptions import TokenStoreError
from hfauth_mw._principal import token_digest
from hfauth_mw._store import LocalTokenStore
token = open("{token_file}").read().strip()
with LocalTokenStore("{store}") as store:
    print("read_only", store.read_only)
    print("lookup", store.lookup(token_digest(token))["name"])
    try:
        store.create_token(user="bob")
    except TokenStoreError as exc:
        print("create", exc)
"""


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare -m for a private mount")
def test_read_only_mount(tmp_path: Path) -> None:
    store_dir = tmp_path / "mnt"
    store_dir.mkdir()
    store = store_dir / "tokens.sqlite3"
    token_file = tmp_path / "token"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(_store.__file__).parents[1]),
        "PYTHON": sys.executable,
        "STORE_DIR": str(store_dir),
        "TOKEN_FILE": str(token_file),
        "CREATE": textwrap.dedent(_CREATE.format(store=store)),
        "CHECK": textwrap.dedent(_CHECK.format(store=store, token_file=token_file)),
    }
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _READ_ONLY_MOUNT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["read_only True", "lookup alice"]
    assert lines[2].startswith(f"create token store {store} is read-only here")
    assert token_file.read_text().strip() not in result.stdout + result.stderr


# --- rows that do not parse ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "assignment", "column", "listed"),
    [
        pytest.param("tokens", "expires_at = 'next tuesday'", "expires_at", True, id="expiry-text"),
        pytest.param(
            "tokens",
            "expires_at = '9999-12-31T23:59:59-01:00'",
            "expires_at",
            True,
            id="expiry-out-of-range",
        ),
        pytest.param(
            "tokens", "created_at = '2024-01-01T00:00:00'", "created_at", True, id="created-no-zone"
        ),
        pytest.param("tokens", "created_at = 17", "created_at", True, id="created-a-number"),
        pytest.param("tokens", "role = x'7265'", "role", True, id="role-a-blob"),
        pytest.param("tokens", "display_name = x'00'", "display_name", True, id="name-a-blob"),
        pytest.param(
            "tokens", "fine_grained = 'not json'", "fine_grained", False, id="scoped-not-json"
        ),
        pytest.param(
            "tokens",
            """fine_grained = '[{"type": "model"}]'""",
            "fine_grained",
            False,
            id="scoped-entry-incomplete",
        ),
        pytest.param(
            "tokens",
            """global_permissions = '{"a": 1}'""",
            "global_permissions",
            False,
            id="global-not-a-list",
        ),
        pytest.param(
            "tokens",
            "can_read_gated_repos = 'false'",
            "can_read_gated_repos",
            False,
            id="gated-flag-text",
        ),
        pytest.param(
            "tokens", "can_read_gated_repos = 2", "can_read_gated_repos", False, id="gated-flag-2"
        ),
        pytest.param("users", """orgs = '[{"name": 1}]'""", "orgs", False, id="org-bad"),
        pytest.param("users", "orgs = '['", "orgs", False, id="orgs-cut-short"),
        pytest.param(
            "users",
            "orgs = '" + "[" * 100_000 + "]" * 100_000 + "'",
            "orgs",
            False,
            id="orgs-nested-too-deep",
        ),
    ],
)
def test_malformed_row_is_a_token_store_error(
    store: LocalTokenStore, db_path: Path, table: str, assignment: str, column: str, listed: bool
) -> None:
    issued = store.create_token(
        user="alice",
        role="fineGrained",
        fine_grained=[FineGrainedEntry("model", "acme/x", ("repo.content.read",))],
        orgs=[OrgGrant("acme", "read")],
    )
    conn = sqlite3.connect(db_path)
    conn.execute(f"UPDATE {table} SET {assignment}")  # noqa: S608 - constants of this test
    conn.commit()
    conn.close()
    expected = (
        f"token store {db_path}: the entry of token {issued.record.fingerprint} is malformed "
        f"({column} does not parse); revoke it and create a new token"
    )
    calls = [lambda: store.lookup(token_digest(issued.token))]
    if listed:
        calls.append(store.list_tokens)
    for call in calls:
        with pytest.raises(TokenStoreError) as caught:
            call()
        assert str(caught.value) == expected
        assert issued.token not in str(caught.value)
    assert store.revoke(issued.record.fingerprint) == 1  # the way out the message names


# --- version control ----------------------------------------------------------------------


def test_git_ignores_every_file_a_store_keeps(tmp_path: Path) -> None:
    """``tokens.sqlite3`` in a checkout must not be committed, nor the -wal and
    -shm files SQLite keeps beside it (they hold the newest digests), nor a journal."""
    path = tmp_path / "tokens.sqlite3"
    with LocalTokenStore(path) as store:
        store.create_token(user="alice")  # its pooled connection keeps the WAL files open
        beside = sorted(p.name for p in tmp_path.iterdir())
    assert {"tokens.sqlite3-wal", "tokens.sqlite3-shm"} <= set(beside)
    ignored = git_ignores([*beside, "tokens.sqlite3-journal"])
    assert ignored == dict.fromkeys(ignored, True)
