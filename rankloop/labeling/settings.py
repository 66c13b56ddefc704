"""Every ``RANKLOOP_*`` environment variable the labeling app reads, in one typed object.

``LabelingSettings()`` reads the environment when it is built (not at import), so a process that
sets a variable before starting the app (``rankloop serve --workers N`` does) is seen. Explicit
arguments (``create_app(...)``, command-line flags) win over the environment.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Annotated, Any, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class LabelingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKLOOP_", extra="ignore")

    database_url: Optional[str] = Field(None, description="SQLAlchemy URL (default: sqlite:///rankloop-labeling.db)")
    admin_user: Optional[str] = Field(None, description="create this admin when the database has no users")
    admin_password: Optional[str] = Field(None, description="password of admin_user")
    secure_cookies: bool = Field(False, description="HTTPS: Secure, __Host- cookies and HSTS")
    new_password: Optional[str] = Field(None, description="`rankloop labeling create-user`'s password when not given")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="addresses or networks (comma-separated) of reverse proxies whose "
        "X-Forwarded-For names the client; empty: the connection's peer is the client")
    max_body_bytes: int = Field(1 * MiB, ge=1024, description="largest request body, except imports")
    max_import_bytes: int = Field(64 * MiB, ge=1024, description="largest import request (JSON or files)")
    token_days: float = Field(90.0, gt=0, description="lifetime of a script token when none is asked for")
    token_max_days: float = Field(365.0, gt=0, description="longest lifetime a script token may be given")
    login_max_failures: int = Field(10, ge=1, description="wrong passwords per (username, address) before backoff")
    db_pool_size: int = Field(20, ge=1, le=1000, description="PostgreSQL connections per app process (a fixed pool: "
                              "processes × this must stay under the server's max_connections)")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        for p in v:
            ip_network(p, strict=False)  # a typo is an error at start, not a silently open door
        return v
