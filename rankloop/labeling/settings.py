"""Every ``RANKLOOP_*`` environment variable the labeling app reads, in one typed object.

``LabelingSettings()`` reads the environment when it is built (not at import), so a process that
sets a variable before starting the app (``rankloop serve --workers N`` does) is seen. Explicit
arguments (``create_app(...)``, command-line flags) win over the environment.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LabelingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKLOOP_", extra="ignore")

    database_url: Optional[str] = Field(None, description="SQLAlchemy URL (default: sqlite:///rankloop-labeling.db)")
    admin_user: Optional[str] = Field(None, description="create this admin when the database has no users")
    admin_password: Optional[str] = Field(None, description="password of admin_user")
    secure_cookies: bool = Field(False, description="mark cookies Secure (serve behind HTTPS)")
    new_password: Optional[str] = Field(None, description="`rankloop labeling create-user`'s password when not given")
