"""`dfscan tenants ...` and `dfscan keys ...`: the tenants of the HTTP API and their keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from dfscan.ids import parse_id
from dfscan.settings import get_settings

tenants_app = typer.Typer(help="Tenants of the HTTP API (`dfscan api`).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the HTTP API: made, listed, revoked.", no_args_is_help=True)


def _sessions():  # type: ignore[no-untyped-def]
    from db.session import new_engine, new_session_factory

    return new_session_factory(new_engine(get_settings().database_url))


@tenants_app.command("create")
def tenants_create(name: Annotated[str, typer.Argument(help="1-64 of a-z, 0-9, '-', '_', '.'.")]) -> None:
    """Make a tenant with its own webhook signing secret (printed once, on stdout)."""
    from db.tenants import create_tenant

    with _sessions().begin() as session:
        tenant = create_tenant(session, name)
        tenant_id, secret = tenant.id, tenant.webhook_secret
    typer.echo(f"tenant {name} {tenant_id}", err=True)
    typer.echo(f"webhook secret (shown once; `dfscan tenants rotate-secret {name}` replaces it):", err=True)
    typer.echo(secret)


@tenants_app.command("list")
def tenants_list() -> None:
    """Every tenant: id, name, when made, whether a previous webhook secret is still valid."""
    from db.tenants import list_tenants

    with _sessions()() as session:
        for tenant in list_tenants(session):
            grace = tenant.previous_webhook_secret_until
            extra = f" previous-secret-valid-until={grace.isoformat()}" if grace else ""
            own = "own" if tenant.webhook_secret else "DFSCAN_WEBHOOK_SECRET"
            typer.echo(
                f"{tenant.id} {tenant.name} created={tenant.created_at.isoformat()} secret={own}{extra}"
            )


@tenants_app.command("rotate-secret")
def tenants_rotate_secret(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    grace_hours: Annotated[
        float, typer.Option(min=0, help="Hours the current secret stays valid: events carry both signatures.")
    ] = 24.0,
) -> None:
    """Give the tenant a new webhook secret (printed once); the old one keeps signing for --grace-hours."""
    from db.tenants import rotate_webhook_secret

    with _sessions().begin() as session:
        tenant = rotate_webhook_secret(session, name, grace=timedelta(hours=grace_hours))
        secret, until = tenant.webhook_secret, tenant.previous_webhook_secret_until
    typer.echo(
        f"new webhook secret for {name}; "
        + (f"the previous one stays valid until {until.isoformat()}" if until else "no previous secret kept"),
        err=True,
    )
    typer.echo(secret)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (`dfscan tenants create` makes one).")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: submit, read, review.")] = "submit,read",
) -> None:
    """Make an API key and print it once (only its SHA-256 is stored: it cannot be shown again)."""
    from db.tenants import create_key, parse_scopes, tenant_by_name

    wanted = parse_scopes(scopes)
    with _sessions().begin() as session:
        new = create_key(session, tenant_by_name(session, tenant).id, wanted)
    typer.echo(f"key {new.id} for tenant {tenant}, scopes {','.join(new.scopes)}; shown once:", err=True)
    typer.echo(new.raw)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """Keys: id, tenant, public prefix, scopes, made, revoked (never the key itself)."""
    from db.tenants import KEY_PREFIX, list_keys, tenant_by_name

    with _sessions()() as session:
        tenant_id = tenant_by_name(session, tenant).id if tenant else None
        keys = list_keys(session, tenant_id)
    for key in keys:
        revoked = f" revoked={key.revoked_at.isoformat()}" if key.revoked_at else ""
        typer.echo(
            f"{key.id} tenant={key.tenant} key={KEY_PREFIX}{key.prefix}_... scopes={','.join(key.scopes)} "
            f"created={key.created_at.isoformat()}{revoked}"
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (from `dfscan keys list`).")]) -> None:
    """Revoke a key: its next request answers 401."""
    from db.tenants import revoke_key

    kid = parse_id(key_id, "key id")
    with _sessions().begin() as session:
        made = revoke_key(session, kid)
    typer.echo(f"key {kid} " + ("revoked" if made else "was already revoked"), err=True)
