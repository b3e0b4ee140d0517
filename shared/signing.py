"""HMAC-SHA256 signatures on control-plane events (deployments and their requests).

A signed event carries ``signature``: the hex HMAC-SHA256, under the stack's deploy
key, of its canonical body (every other field as sorted, compact JSON). The body is
re-derived from the parsed event, so the signature does not depend on how a client
spaced or ordered its JSON, and any change to any field breaks it.

The key comes from ``FLYWHEEL_DEPLOY_KEY`` or the file ``FLYWHEEL_DEPLOY_KEY_FILE``
(a mounted secret); ``flywheel up`` generates one per stack when neither is set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import TypeVar

from shared.events import Event
from shared.settings import ServiceSettings
from shared.store import canonical_json

SIGNATURE = "signature"
STACK_KEY_FILE = Path("var/deploy.key")
"""Where ``flywheel up`` keeps the key it generates (relative to the working folder)."""
MIN_KEY_BYTES = 16
"""Shorter keys are refused: an HMAC is only as strong as its key."""

E = TypeVar("E", bound=Event)


class DeployKeyError(ValueError):
    """The deploy key is configured but unusable (empty, too short, unreadable file)."""


def load_key(settings: ServiceSettings, fallback: Path | None = None) -> bytes | None:
    """The deploy key from the settings (None when neither the key nor its file is set).

    ``fallback`` is a key file read when neither is set and it exists (the CLI passes
    :data:`STACK_KEY_FILE`, so it works beside a ``flywheel up`` stack unconfigured).

    Raises :class:`DeployKeyError` for a configured key that is unusable, so a service never
    starts believing it is protected when it is not.
    """
    if settings.deploy_key is not None:
        key = settings.deploy_key.get_secret_value().strip().encode()
        source = "FLYWHEEL_DEPLOY_KEY"
    elif settings.deploy_key_file or (fallback is not None and fallback.exists()):
        path = Path(settings.deploy_key_file or str(fallback))
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise DeployKeyError(f"cannot read the deploy key file {path}: {err}") from None
        source = str(path)
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise DeployKeyError(f"the deploy key from {source} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def generate_key(path: Path) -> Path:
    """Write a fresh random key to ``path`` (mode 0600) unless one is there; its path."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new_key() + "\n")
    return path


def _body(event: Event) -> bytes:
    return canonical_json(event.model_dump(mode="json", exclude={SIGNATURE}))


def signature(event: Event, key: bytes) -> str:
    """The hex HMAC-SHA256 of ``event``'s canonical body under ``key``."""
    return hmac.new(key, _body(event), hashlib.sha256).hexdigest()


def sign(event: E, key: bytes) -> E:
    """A copy of ``event`` carrying its signature (unchanged if it has no such field)."""
    if SIGNATURE not in type(event).model_fields:
        return event
    return event.model_copy(update={SIGNATURE: signature(event, key)})


def verify(event: Event, key: bytes) -> bool:
    """True when ``event`` carries a valid signature under ``key`` (constant-time)."""
    given = getattr(event, SIGNATURE, "")
    return bool(given) and hmac.compare_digest(str(given), signature(event, key))


class Signer:
    """Signs the events that carry a signature field (used by event publishers).

    Args:
        key: the deploy key.
    """

    def __init__(self, key: bytes):
        self.key = key

    def __call__(self, event: E) -> E:
        return sign(event, self.key)


def new_key() -> str:
    """A fresh random key (64 hex characters)."""
    return secrets.token_hex(32)
