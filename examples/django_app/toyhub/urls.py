from django.urls import path

from . import views

urlpatterns = [
    path("health", views.health),
    path("v1/whoami", views.whoami),
    path("v1/models", views.list_models),
    path("v1/models/<str:owner>/<str:name>/infer", views.infer),
    path("v1/models/<str:owner>/<str:name>", views.upload),
]
