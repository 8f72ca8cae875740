"""The views: a site page, a health check, and the model API (DRF)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hfauth_mw import RequestAuth, Visibility
from hfauth_mw.drf import HasRepoAccess

from .catalog import MODELS

_revisions = dict.fromkeys(MODELS, 0)


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("The toy model API lives under /api/v1/.")


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _not_found(owner: str, name: str) -> Response:
    return Response({"detail": f"no model {owner}/{name} here"}, status=404)


class ModelList(APIView):
    """Anyone may list; a token adds the private models it can read."""

    permission_classes = (AllowAny,)

    def get(self, request: Request) -> Response:
        auth = request.auth  # a RequestAuth with a valid token, None without one
        if isinstance(auth, RequestAuth):
            models = [m for m in MODELS if auth.can_read(f"model:{m}")]
            return Response({"models": models, "user": request.user.username})
        public = [m for m, seen in MODELS.items() if seen is Visibility.PUBLIC]
        return Response({"models": public, "user": None})


class Infer(APIView):
    permission_classes = (HasRepoAccess("read"),)  # the repo from the URL's owner/name

    def post(self, request: Request, owner: str, name: str) -> Response:
        model = f"{owner}/{name}"
        if model not in MODELS:
            return _not_found(owner, name)
        data = request.data if isinstance(request.data, dict) else {}
        text = str(data.get("inputs", ""))[:10_000]
        outputs = " ".join(reversed(text.split()))
        return Response({"model": model, "outputs": outputs, "by": request.user.username})


class Upload(APIView):
    permission_classes = (HasRepoAccess("write"),)

    def put(self, request: Request, owner: str, name: str) -> Response:
        model = f"{owner}/{name}"
        if model not in MODELS:
            return _not_found(owner, name)
        _revisions[model] += 1
        return Response({"model": model, "revision": _revisions[model], "updated": True})
