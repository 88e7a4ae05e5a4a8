from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from hosts.api import ssh_views, views

router = DefaultRouter()
router.register("hosts", views.HostViewSet, basename="host")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollment-token")
router.register("audit", views.AuditViewSet, basename="audit")
router.register("ssh-hosts", ssh_views.SSHTargetViewSet, basename="ssh-host")

urlpatterns = [path("enroll/", views.EnrollView.as_view(), name="enroll"), *router.urls]
