"""Where the station's secrets come from: systemd credentials, never a world-readable config file.

Under systemd, `LoadCredential=` puts each secret in `$CREDENTIALS_DIRECTORY`; outside it (the
doctor run by hand) the same file is read from where the unit loads it, when readable.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

DEFAULT_CREDENTIALS_DIR = Path("/etc/amflow-edge")


def read_credential(name: str, directory: Path | None = None) -> SecretStr | None:
    """The credential `name` from `directory` (default `$CREDENTIALS_DIRECTORY`), or None when there is none.
    A credential that is there but cannot be read raises OSError: that is a permission to fix, not a
    missing password."""
    if directory is None:
        env = os.environ.get("CREDENTIALS_DIRECTORY")
        if not env:
            return None
        directory = Path(env)
    try:
        return SecretStr((directory / name).read_text(encoding="utf-8").rstrip("\r\n"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def secret_from(value: SecretStr | None, credential: str | None, what: str) -> SecretStr | None:
    """The secret as configured, else from its systemd credential; None when neither is set."""
    if value is not None or credential is None:
        return value
    try:
        found = read_credential(credential)
    except OSError as exc:
        raise ValueError(
            f"cannot read the {credential!r} credential for {what} ({exc.strerror}); check the unit's "
            "LoadCredential= and the file's permissions"
        ) from None
    # scripts/install leaves an empty file (a missing one fails the unit's start): not set yet.
    return found if found is not None and found.get_secret_value() else None
