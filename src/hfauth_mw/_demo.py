"""The demo: a toy model-inference server guarded by hfauth-mw, and its seeded users.

:func:`build_app` is the whole server (``hfauth-mw demo`` and ``make demo`` run
it, so it lives inside the package; ``examples/inference_server.py`` is a
similar server with routes of its own). It uses only the public API of
``hfauth_mw`` and Starlette, and reads top to bottom:

* ``GET /health``: public, no token.
* ``GET /v1/whoami``: the caller, as the token source described them.
* ``GET /v1/models``: the demo models the caller may read.
* ``GET /v1/models/{owner}/{name}``: a model's card (read access).
* ``POST /v1/models/{owner}/{name}/infer``: run the toy model (read access).
* ``PUT /v1/models/{owner}/{name}``: replace the toy "weights" (write access).
* ``WS /v1/models/{owner}/{name}/stream``: the output, word by word (read access).

:func:`seed_demo_store` makes a :class:`~hfauth_mw.LocalTokenStore` holding four
users whose tokens show the Hub's rules at work, and marks it as a demo store;
it never seeds a store it did not make. Their tokens are derived from a random
seed kept next to the store (mode 0600), so later runs give the same tokens and
no secret-looking token is ever written in the source tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import string
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import (
    AccessPolicy,
    FineGrainedEntry,
    HFAuthMiddleware,
    IntrospectionSource,
    LocalTokenStore,
    OrgGrant,
    Repo,
    Visibility,
    get_request_auth,
    require_read,
    require_write,
)
from ._exceptions import TokenStoreError
from ._principal import Principal, fingerprint_of, token_digest

__all__ = [
    "DEMO_MODELS",
    "DEMO_USERS",
    "DemoModel",
    "DemoStoreError",
    "DemoUser",
    "build_app",
    "seed_demo_store",
]

#: Longest ``inputs`` text the toy models accept.
MAX_INPUT_CHARS = 10_000


# --- the toy models ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoModel:
    """A model the demo serves: a Hub repository id, a toy task, a visibility."""

    id: str
    task: str = "echo"  # sentiment | reverse | echo
    visibility: Visibility = Visibility.PRIVATE

    @property
    def repo(self) -> Repo:
        return Repo.parse(f"model:{self.id}")


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("acme/sentiment", "sentiment"),
    DemoModel("alice/tiny-lm", "reverse"),
    DemoModel("bob/echo", "echo"),
    DemoModel("acme/public-demo", "sentiment", Visibility.PUBLIC),
)

_POSITIVE = frozenset({"good", "great", "love", "happy", "excellent", "nice", "fast", "fun"})
_NEGATIVE = frozenset({"bad", "awful", "hate", "sad", "terrible", "slow", "broken", "boring"})


@dataclass(slots=True)
class _LoadedModel:
    """A toy model in memory: its task and replaceable "weights"."""

    spec: DemoModel
    weights: dict[str, Any] = field(default_factory=dict)
    revision: int = 0

    def run(self, text: str) -> dict[str, Any]:
        words = text.split()
        if self.spec.task == "sentiment":
            positive = _word_set(self.weights.get("positive"), _POSITIVE)
            negative = _word_set(self.weights.get("negative"), _NEGATIVE)
            lowered = [word.strip(".,!?;:").lower() for word in words]
            score = sum(w in positive for w in lowered) - sum(w in negative for w in lowered)
            label = "POSITIVE" if score > 0 else "NEGATIVE" if score < 0 else "NEUTRAL"
            return {"label": label, "score": score, "outputs": f"{label} (score {score})"}
        if self.spec.task == "reverse":
            return {"outputs": " ".join(reversed(words))}
        return {"outputs": text}

    def card(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "task": self.spec.task,
            "visibility": self.spec.visibility.value,
            "revision": self.revision,
        }


def _word_set(value: object, builtin: frozenset[str]) -> frozenset[str]:
    """The built-in words plus the ones the uploaded "weights" add."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return builtin | {item.lower() for item in value}
    return builtin


# --- the application -----------------------------------------------------------------------


def build_app(
    source: IntrospectionSource,
    *,
    repos: Iterable[DemoModel] = DEMO_MODELS,
    gated: Iterable[str] = (),
    admitted: Mapping[str, Iterable[str]] | None = None,
    realm: str = "hfauth-mw demo",
) -> Starlette:
    """The toy inference server, guarded by :class:`~hfauth_mw.HFAuthMiddleware`.

    ``source`` checks tokens (``HubWhoamiSource(url)`` or
    ``LocalStoreSource(LocalTokenStore(path))``); ``repos`` are the models to
    serve; ``gated`` names repositories (``owner/name``) to treat as gated,
    and ``admitted`` the users each one's gate let in (``{"acme/x": ["bob"]}``).
    """
    models = {spec.id: _LoadedModel(spec) for spec in repos}
    gated_ids = {Repo.parse(text).id for text in gated}
    gate_grants = {
        Repo.parse(text).id: frozenset(users) for text, users in (admitted or {}).items()
    }

    def gate_passed(principal: Principal, repo: Repo) -> bool:
        return principal.name in gate_grants.get(repo.id, ())

    def visibility(repo: Repo) -> Visibility:
        # What only the server knows: which repositories are public or gated.
        if repo.id in gated_ids:
            return Visibility.GATED
        model = models.get(repo.id)
        return model.spec.visibility if model and repo.type == "model" else Visibility.PRIVATE

    def find(owner: str, name: str) -> _LoadedModel | None:
        return models.get(f"{owner}/{name}")

    def not_found(owner: str, name: str) -> JSONResponse:
        return JSONResponse(
            {"error": "not_found", "error_description": f"no model {owner}/{name} here"},
            status_code=404,
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(get_request_auth(request).principal.to_dict())

    async def list_models(request: Request) -> JSONResponse:
        auth = get_request_auth(request)
        visible = []
        for model in models.values():
            if await auth.acan_read(model.spec.repo):
                card = model.card()
                card["can_write"] = bool(await auth.acan_write(model.spec.repo))
                visible.append(card)
        return JSONResponse({"models": visible})

    async def model_card(request: Request) -> JSONResponse:
        owner, name = request.path_params["owner"], request.path_params["name"]
        model = find(owner, name)
        return JSONResponse(model.card()) if model else not_found(owner, name)

    async def infer(request: Request) -> JSONResponse:
        owner, name = request.path_params["owner"], request.path_params["name"]
        model = find(owner, name)
        if model is None:
            return not_found(owner, name)
        text = await _inputs(request)
        if text is None:
            return _bad_request('send JSON {"inputs": "some text"}')
        return JSONResponse({"model": model.spec.id, "revision": model.revision, **model.run(text)})

    async def upload(request: Request) -> JSONResponse:
        owner, name = request.path_params["owner"], request.path_params["name"]
        model = find(owner, name)
        if model is None:
            return not_found(owner, name)
        try:
            weights = await request.json()
        except ValueError:
            weights = None
        if not isinstance(weights, dict):
            return _bad_request("send the new weights as a JSON object")
        model.weights = weights
        model.revision += 1
        return JSONResponse({"model": model.spec.id, "revision": model.revision, "updated": True})

    async def stream(websocket: WebSocket) -> None:
        owner, name = websocket.path_params["owner"], websocket.path_params["name"]
        model = find(owner, name)
        if model is None:
            await websocket.close(code=4404, reason=f"no model {owner}/{name} here")
            return
        await websocket.accept()
        message = await websocket.receive_json()
        text = message.get("inputs") if isinstance(message, dict) else None
        if not isinstance(text, str) or len(text) > MAX_INPUT_CHARS:
            await websocket.close(code=1007, reason='send JSON {"inputs": "some text"}')
            return
        for word in str(model.run(text)["outputs"]).split():
            await websocket.send_json({"token": word})
        await websocket.send_json({"done": True})
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/whoami", whoami),
            Route("/v1/models", list_models),
            Route("/v1/models/{owner}/{name}", model_card, methods=["GET"]),
            Route("/v1/models/{owner}/{name}", upload, methods=["PUT"]),
            Route("/v1/models/{owner}/{name}/infer", infer, methods=["POST"]),
            WebSocketRoute("/v1/models/{owner}/{name}/stream", stream),
        ]
    )
    # Default deny: every path but /health needs a valid token. The rules add
    # per-repository checks; GET /v1/models and /v1/whoami need any valid token.
    app.add_middleware(
        HFAuthMiddleware,
        source=source,
        realm=realm,
        public_paths=["/health"],
        rules=[
            require_read("POST /v1/models/{owner}/{name}/infer"),
            require_write("PUT /v1/models/{owner}/{name}"),
            require_read("GET /v1/models/{owner}/{name}/stream"),  # the WebSocket
            require_read("GET /v1/models/{owner}/{name}"),
        ],
        policy=AccessPolicy(visibility=visibility, gate_passed=gate_passed),
    )
    return app


async def _inputs(request: Request) -> str | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    text = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(text, str) or len(text) > MAX_INPUT_CHARS:
        return None
    return text


def _bad_request(description: str) -> JSONResponse:
    return JSONResponse({"error": "bad_request", "error_description": description}, 400)


# --- the demo users --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A seeded user and their one token."""

    name: str
    role: str
    what: str
    orgs: tuple[OrgGrant, ...] = ()
    fine_grained: tuple[FineGrainedEntry, ...] = ()


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(
        "alice",
        "write",
        "write token, org acme role write: reads and writes alice/* and acme/*",
        orgs=(OrgGrant("acme", "write"),),
    ),
    DemoUser("bob", "read", "read token: reads bob/* and public models, writes nothing"),
    DemoUser(
        "carol",
        "fineGrained",
        "fine-grained token, repo.content.read on model acme/sentiment only",
        orgs=(OrgGrant("acme", "read"),),
        fine_grained=(FineGrainedEntry("model", "acme/sentiment", ("repo.content.read",)),),
    ),
    DemoUser(
        "dave",
        "write",
        "write token, but org acme role read: reads acme/*, cannot write it",
        orgs=(OrgGrant("acme", "read"),),
    ),
)

_ALPHABET = string.ascii_letters + string.digits
_SEED_SUFFIX = ".demo-seed"
_MARKER_SUFFIX = ".demo"
_MARKER_TEXT = (
    "This token store was made and seeded by `hfauth-mw demo`; its demo tokens are derived\n"
    "from the .demo-seed file beside it. Delete the store and both files to start over.\n"
)


class DemoStoreError(TokenStoreError):
    """The demo cannot use this store: not one it made, or its seed file is damaged."""


def _beside(store_path: Path, suffix: str) -> Path:
    return store_path.with_name(store_path.name + suffix)


def _start_over(store_path: Path) -> str:
    seed, marker = _beside(store_path, _SEED_SUFFIX), _beside(store_path, _MARKER_SUFFIX)
    return f"delete {store_path}, {seed} and {marker} to start over"


def _read_seed(store_path: Path) -> bytes:
    """The seed kept beside the store; FileNotFoundError when there is none yet."""
    seed_path = _beside(store_path, _SEED_SUFFIX)
    try:
        text = seed_path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise DemoStoreError(
            f"cannot read demo seed file {seed_path} ({why}): {_start_over(store_path)}"
        ) from None
    try:
        seed = bytes.fromhex(text.strip())
    except ValueError:
        seed = b""
    if len(seed) < 16:
        raise DemoStoreError(f"demo seed file {seed_path} is damaged: {_start_over(store_path)}")
    return seed


def _write_new_file(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) only if it does not exist yet, all at once.

    The text goes to a temporary file first, which is then hard-linked to ``path``:
    a reader sees either no file or the whole text, and when two processes race,
    the first link wins and the other's text is dropped.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another run's is there: keep it
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _seed_for(store_path: Path) -> bytes:
    """The store's random seed, made on first use and kept in a 0600 file beside it."""
    try:
        return _read_seed(store_path)
    except FileNotFoundError:
        pass
    seed_path = _beside(store_path, _SEED_SUFFIX)
    try:
        _write_new_file(seed_path, secrets.token_bytes(32).hex() + "\n")
    except OSError as exc:
        raise DemoStoreError(f"cannot write demo seed file {seed_path}: {exc.strerror}") from None
    return _read_seed(store_path)  # the winner's seed, when another run made it first


def _derive_token(seed: bytes, user: str) -> str:
    """``hf_`` + 34 letters/digits from HMAC-SHA256(seed, user) (256 bits -> ~202 used)."""
    number = int.from_bytes(hmac.new(seed, user.encode(), hashlib.sha256).digest(), "big")
    chars = []
    for _ in range(34):
        number, index = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return "hf_" + "".join(chars)


def _fill(store_path: Path, seed: bytes) -> None:
    """Add every demo user's token to a store the demo has just created."""
    with LocalTokenStore(store_path) as store:
        for user in DEMO_USERS:
            token = _derive_token(seed, user.name)
            try:
                store.add_token(
                    token,
                    user=user.name,
                    role=user.role,
                    orgs=user.orgs,
                    fine_grained=user.fine_grained,
                    display_name=f"demo-{user.name}",
                )
            except TokenStoreError:
                # Another first run of the demo added it a moment ago: fine.
                if store.lookup(token_digest(token)) is None:
                    raise


def _check_unmarked(store_path: Path) -> bytes:
    """The seed of a demo store made before stores were marked; refuse any other store.

    Such a store is the demo's when its seed file is beside it and every token
    in it is one the demo derives from that seed.
    """
    refusal = DemoStoreError(
        f"{store_path} is not a demo store (it holds tokens the demo did not make); "
        "the demo seeds only a store it creates: give --store a path that does not exist yet"
    )
    try:
        seed = _read_seed(store_path)
    except FileNotFoundError:
        raise refusal from None
    demo = {fingerprint_of(token_digest(_derive_token(seed, u.name))) for u in DEMO_USERS}
    with LocalTokenStore(store_path) as store:
        if any(record.fingerprint not in demo for record in store.list_tokens()):
            raise refusal
    return seed


def seed_demo_store(path: str | os.PathLike[str]) -> dict[str, str]:
    """Make and seed the demo store at ``path`` once; return ``{user: token}``.

    A new store gets the demo users' tokens, derived from a random per-store
    seed (``<path>.demo-seed``), and is marked as a demo store (``<path>.demo``).
    Later calls add nothing: they return the demo tokens still in the store, so
    a revoked demo token stays revoked. A store the demo did not make is refused
    with :class:`DemoStoreError` and left untouched; so is one with a damaged
    seed file. A store seeded by an older version (no mark) is accepted when
    its seed file is beside it and every token in it is a demo token. The
    parent directory is created.
    """
    store_path = Path(path)
    store_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker = _beside(store_path, _MARKER_SUFFIX)
    if store_path.exists() and marker.exists():
        try:
            seed = _read_seed(store_path)
        except FileNotFoundError:
            raise DemoStoreError(
                f"demo seed file {_beside(store_path, _SEED_SUFFIX)} is missing: "
                f"{_start_over(store_path)}"
            ) from None
    else:
        if store_path.exists():
            seed = _check_unmarked(store_path)
        else:
            seed = _seed_for(store_path)
            _fill(store_path, seed)
        try:
            _write_new_file(marker, _MARKER_TEXT)
        except OSError as exc:
            raise DemoStoreError(
                f"cannot mark {store_path} as a demo store: {exc.strerror}"
            ) from None
    tokens: dict[str, str] = {}
    with LocalTokenStore(store_path) as store:
        for user in DEMO_USERS:
            token = _derive_token(seed, user.name)
            if store.lookup(token_digest(token)) is not None:
                tokens[user.name] = token
    return tokens


def describe_users() -> Mapping[str, str]:
    """``{user: what their token can do}`` for the demo's banner."""
    return {user.name: user.what for user in DEMO_USERS}
