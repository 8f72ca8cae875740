from django.urls import path

from . import views

urlpatterns = [
    path("", views.home),
    path("health", views.health),
    path("api/v1/models", views.ModelList.as_view()),
    path("api/v1/models/<str:owner>/<str:name>/infer", views.Infer.as_view()),
    path("api/v1/models/<str:owner>/<str:name>", views.Upload.as_view()),
]
