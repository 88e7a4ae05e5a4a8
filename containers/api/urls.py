from __future__ import annotations

from rest_framework.routers import DefaultRouter

from containers.api import views

router = DefaultRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("containers", views.ContainerViewSet, basename="container")
router.register("images", views.ImageViewSet, basename="image")
router.register("operations", views.OperationViewSet, basename="operation")

urlpatterns = router.urls
