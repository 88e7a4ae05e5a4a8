from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from hosts.api import views

router = DefaultRouter()
router.register("hosts", views.HostViewSet, basename="host")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollment-token")
router.register("audit", views.AuditViewSet, basename="audit")

urlpatterns = [path("enroll/", views.EnrollView.as_view(), name="enroll"), *router.urls]
