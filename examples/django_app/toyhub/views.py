"""The views: read a model to run it, write it to replace its toy weights."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from hfauth_mw import Repo, Visibility
from hfauth_mw.django import require_repo

#: The toy models: id -> visibility. Replace with your own registry.
MODELS = {
    "acme/sentiment": Visibility.PRIVATE,
    "alice/tiny-lm": Visibility.PRIVATE,
    "acme/public-demo": Visibility.PUBLIC,
}
_revisions = dict.fromkeys(MODELS, 0)


def visibility(repo: Repo) -> Visibility:
    return MODELS.get(repo.id, Visibility.PRIVATE) if repo.type == "model" else Visibility.PRIVATE


def _not_found(owner: str, name: str) -> JsonResponse:
    description = f"no model {owner}/{name} here"
    return JsonResponse({"error": "not_found", "error_description": description}, status=404)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def whoami(request: HttpRequest) -> JsonResponse:
    principal = request.principal  # set by hfauth_mw.django.HFAuthMiddleware
    return JsonResponse({"name": principal.name, "token_role": principal.token_role})


@require_GET
def list_models(request: HttpRequest) -> JsonResponse:
    readable = [m for m in MODELS if request.hfauth.can_read(f"model:{m}")]
    return JsonResponse({"models": readable})


@require_POST
@require_repo("read")
def infer(request: HttpRequest, owner: str, name: str) -> JsonResponse:
    model = f"{owner}/{name}"
    if model not in MODELS:
        return _not_found(owner, name)
    try:
        text = str(json.loads(request.body or b"{}").get("inputs", ""))[:10_000]
    except (ValueError, AttributeError):
        text = ""
    outputs = " ".join(reversed(text.split()))
    return JsonResponse({"model": model, "revision": _revisions[model], "outputs": outputs})


@require_http_methods(["PUT"])
@require_repo("write")
def upload(request: HttpRequest, owner: str, name: str) -> JsonResponse:
    model = f"{owner}/{name}"
    if model not in MODELS:
        return _not_found(owner, name)
    _revisions[model] += 1
    return JsonResponse({"model": model, "revision": _revisions[model], "updated": True})
