"""URLs of the browser UI (mounted at /): login, dashboard, hosts, containers, images,
projects, operations and the audit log."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from frontend.views import containers, dashboard, hosts, misc

app_name = "frontend"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="frontend/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", dashboard.dashboard, name="dashboard"),
    path("switch-project/", misc.switch_project, name="switch-project"),
    path("hosts/", hosts.host_list, name="host-list"),
    path("hosts/add/", hosts.host_add, name="host-add"),
    path("hosts/<str:host_id>/", hosts.host_detail, name="host-detail"),
    path("hosts/<str:host_id>/maintenance/", hosts.host_maintenance, name="host-maintenance"),
    path("hosts/<str:host_id>/recheck/", hosts.host_recheck, name="host-recheck"),
    path("hosts/<str:host_id>/remove/", hosts.host_remove, name="host-remove"),
    path("containers/", containers.container_list, name="container-list"),
    path("containers/new/", containers.container_create, name="container-create"),
    path("containers/<str:container_id>/", containers.container_detail, name="container-detail"),
    path("containers/<str:container_id>/logs/", containers.container_logs, name="container-logs"),
    path(
        "containers/<str:container_id>/stats/", containers.container_stats, name="container-stats"
    ),
    path(
        "containers/<str:container_id>/<str:action>/",
        containers.container_action,
        name="container-action",
    ),
    path("images/", misc.image_list, name="image-list"),
    path("projects/", misc.project_list, name="project-list"),
    path("projects/<slug:slug>/", misc.project_detail, name="project-detail"),
    path("operations/", misc.operation_list, name="operation-list"),
    path("operations/<str:op_id>/", misc.operation_detail, name="operation-detail"),
    path("audit/", misc.audit_log, name="audit"),
]
