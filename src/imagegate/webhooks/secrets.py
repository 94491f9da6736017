"""Which secrets sign a task owner's webhooks."""

from __future__ import annotations

import os
from pathlib import Path

from imagegate.settings import Settings
from imagegate.store import Store
from imagegate.tasks.keys import STATIC_OWNER_PREFIX
from imagegate.webhooks.signing import generate_secret, is_valid_secret


def load_static_secret(settings: Settings) -> str:
    """IMAGEGATE_WEBHOOK_SECRET, else one generated once and kept under the data directory."""
    if settings.webhook_secret:
        if not is_valid_secret(settings.webhook_secret):
            raise ValueError(
                "IMAGEGATE_WEBHOOK_SECRET must look like whsec_<base64 of at least 16 bytes>"
            )
        return settings.webhook_secret
    path = Path(settings.data_dir) / "webhook_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when several processes start at once, exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = generate_secret()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


class SecretBook:
    def __init__(self, store: Store, static_secret: str) -> None:
        self.store = store
        self.static_secret = static_secret

    async def for_owner(self, owner: str) -> list[str]:
        if owner.startswith(STATIC_OWNER_PREFIX):
            return [self.static_secret]
        return await self.store.webhook_secrets(owner)
