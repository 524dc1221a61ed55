"""``fedmeta certs``: the CA, the server's TLS certificate and the factories' keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmeta.server.certificates import (
    create_certificate_authority,
    create_factory_keys,
    create_server_certificate,
    load_certificate_authority,
)

__all__ = ["certs"]


def certs(
    out: Annotated[Path, typer.Option(help="Folder for the files.")] = Path("certs"),
    host: Annotated[list[str] | None, typer.Option(help="Host name or IP the server is reached at (repeat).")] = None,
    factory: Annotated[list[str] | None, typer.Option(help="Factory to create a key pair for (repeat).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files that exist (otherwise an error).")] = False,
) -> None:
    """Create a CA (or reuse the one in --out), a server certificate and factory key pairs."""
    console = Console()
    try:
        if (out / "ca.crt").exists() and not overwrite:
            authority = load_certificate_authority(out)
            console.print(f"using the existing CA in {out}")
        else:
            authority = create_certificate_authority(out, overwrite=overwrite)
            console.print(f"created {out / 'ca.crt'} and {out / 'ca.key'} (keep ca.key offline)")
        if host:
            console.print(f"created {create_server_certificate(out, authority, host, overwrite=overwrite)}")
        for name in factory or []:
            private, public = create_factory_keys(out, name, overwrite=overwrite)
            console.print(f"created {private} (give to {name} only) and {public} (register on the server)")
    except (FileExistsError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
