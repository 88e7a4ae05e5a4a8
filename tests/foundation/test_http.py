"""Authentication: nothing is readable anonymously but the login page and /healthz."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

ANONYMOUS_FORBIDDEN = [
    "/api/v1/hosts/",
    "/api/v1/containers/",
    "/api/v1/projects/",
    "/api/v1/operations/",
    "/api/v1/images/",
    "/api/v1/enrollment-tokens/",
    "/api/v1/audit/",
    "/api/schema/",
]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ANONYMOUS_FORBIDDEN)
def test_anonymous_api_request_gets_401_never_data(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (401, 403)
    assert b"results" not in response.content


@pytest.mark.django_db
def test_anonymous_api_docs_and_ui_redirect_or_refuse(client) -> None:
    assert client.get("/api/docs/").status_code in (401, 403, 302)
    assert client.get("/login/").status_code == 200


@pytest.mark.django_db
def test_token_authenticates_api_and_docs_render_for_users(client) -> None:
    user = get_user_model().objects.create_user("ops", password="pw-ops-123456")
    token = Token.objects.create(user=user)
    response = client.get("/api/v1/hosts/", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    assert response.json()["count"] == 0
    client.force_login(user)
    assert client.get("/api/docs/").status_code == 200
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/containers/" in schema.content


@pytest.mark.django_db
def test_healthz_checks_database_and_broker(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == "ok"


@pytest.mark.django_db
def test_healthz_answers_503_naming_the_broker_when_it_is_down(client, monkeypatch) -> None:
    # Celery reads CELERY_BROKER_URL from the environment before its own settings.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("error")
