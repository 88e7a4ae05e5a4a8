"""Every app's API routes, under /api/v1/."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("hosts.api.urls")),
    path("", include("containers.api.urls")),
    path("", include("containers.api.cert_views")),
]
