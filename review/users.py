"""Annotator accounts and workspaces (``thresher review users add``).

A new user's generated password and API key go to a 0600 file under
``THRESHER_HOME/argilla/users/NAME.json`` (never printed to logs); hand it to the person.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from review.client import ArgillaClient, open_client
from review.server import Connection, ServerPaths, write_secret
from thresher.errors import ThresherError

log = logging.getLogger(__name__)

ROLES = ("annotator", "admin", "owner")


class UserError(ThresherError):
    """A user or workspace could not be created."""


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: str
    workspace: str
    id: str
    credentials_file: str
    created: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def ensure_workspace(client: ArgillaClient, name: str) -> str:
    """The id of workspace ``name``, created when missing."""
    for ws in client.get("/api/v1/me/workspaces", "list workspaces")["items"]:
        if ws["name"] == name:
            return ws["id"]
    created = client.post("/api/v1/workspaces", f"create workspace {name!r}", json={"name": name})
    return created["id"]


def add_user(
    conn: Connection,
    username: str,
    *,
    role: str = "annotator",
    workspace: str = "thresher",
    password: str | None = None,
    paths: ServerPaths | None = None,
) -> UserInfo:
    """Create ``username`` (or find it) and add it to ``workspace``; credentials in a 0600 file."""
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    from thresher.names import contained, validate_name

    validate_name(username, "user")  # it names the credentials file
    paths = paths or ServerPaths.default()
    cred_file = contained(paths.users_dir, f"{username}.json", "user")
    with open_client(conn) as client:
        ws_id = ensure_workspace(client, workspace)
        users = {u["username"]: u for u in client.get("/api/v1/users", "list users")["items"]}
        created = username not in users
        if created:
            password = password or secrets.token_urlsafe(12)
            user = client.post(
                "/api/v1/users",
                f"create user {username!r}",
                json={
                    "username": username,
                    "first_name": username,
                    "password": password,
                    "role": role,
                },
            )
            # The owner sees API keys in the user list; the create answer may not carry it.
            listed = {u["username"]: u for u in client.get("/api/v1/users", "list users")["items"]}
            user = listed.get(username, user)
            write_secret(
                cred_file,
                {
                    "username": username,
                    "password": password,
                    "api_key": user.get("api_key"),
                    "role": role,
                    "url": conn.url,
                },
            )
        else:
            user = users[username]
        members = client.get(f"/api/v1/workspaces/{ws_id}/users", "workspace users")["items"]
        if all(m["id"] != user["id"] for m in members):
            client.post(
                f"/api/v1/workspaces/{ws_id}/users",
                f"add {username!r} to workspace {workspace!r}",
                json={"user_id": user["id"]},
            )
    log.info("user %s (%s) in workspace %s", username, role, workspace)
    return UserInfo(
        username, user.get("role", role), workspace, user["id"], str(cred_file), created
    )


def read_credentials(username: str, paths: ServerPaths | None = None) -> dict:
    from thresher.names import validate_name

    validate_name(username, "user")
    path = (paths or ServerPaths.default()).users_dir / f"{username}.json"
    if not Path(path).exists():
        raise UserError(f"{path} not found; create the user with `thresher review users add`")
    return json.loads(Path(path).read_text())
