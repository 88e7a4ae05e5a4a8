"""``manage.py rotate_secrets``: re-encrypt every stored secret under the first Fernet key.

Rotation: prepend a new key to CORRAL_FERNET_KEYS, run this, then drop the old key.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from hosts import secrets
from hosts.models_ssh import SSHTarget

ENCRYPTED_FIELDS = ("private_key_encrypted", "passphrase_encrypted", "password_encrypted")


class Command(BaseCommand):
    help = "Re-encrypt all secrets at rest with the first key of CORRAL_FERNET_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        count = 0
        with transaction.atomic():
            for target in SSHTarget.objects.select_for_update().order_by("pk"):
                changed = []
                for field in ENCRYPTED_FIELDS:
                    token = getattr(target, field)
                    if not token:
                        continue
                    try:
                        setattr(target, field, secrets.rotate(token))
                    except secrets.SecretError as exc:
                        raise CommandError(f"ssh target {target.pk} field {field}: {exc}") from None
                    changed.append(field)
                if changed:
                    target.save(update_fields=changed)
                    count += len(changed)
        self.stdout.write(f"re-encrypted {count} secret(s) under the first key")
