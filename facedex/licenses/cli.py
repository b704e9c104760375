"""``facedex license ...``: keys, issuing and reading signed licenses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from facedex.licenses.license import LicenseError, generate_keys, issue, verify

app = typer.Typer(help="Signed licenses (Ed25519): keys, issue, show.", no_args_is_help=True)
console = Console()


@app.command()
def keygen(out: Annotated[Path, typer.Option(help="Where to write the private key (PEM, mode 0600).")] = Path("license-key.pem")) -> None:
    """Make a signing key pair; prints the public key for FACEDEX_LICENSE__PUBLIC_KEY."""
    private, public = generate_keys()
    out.write_text(private)
    out.chmod(0o600)
    console.print(f"private key: {out}\npublic key: {public}")


@app.command("issue")
def issue_(
    key: Annotated[Path, typer.Option(exists=True, help="Private key (PEM) from `facedex license keygen`.")],
    licensee: Annotated[str, typer.Option(help="Who the license is for.")],
    feature: Annotated[list[str], typer.Option(help="A feature to enable (repeat), e.g. index.")],
    days: Annotated[int, typer.Option(min=1, help="Valid for this many days.")] = 365,
    out: Annotated[Path, typer.Option(help="License file to write.")] = Path("license.json"),
) -> None:
    """Sign a license."""
    out.write_bytes(issue(key.read_text(), licensee, feature, days))
    console.print(f"wrote {out}")


@app.command()
def show(
    path: Annotated[Path, typer.Argument(exists=True, help="License file.")],
    public_key: Annotated[str | None, typer.Option(help="Verify with this public key (base64).")] = None,
) -> None:
    """Print a license; with --public-key, verify it too (exit 1 if it does not hold)."""
    console.print_json(orjson.dumps(orjson.loads(path.read_bytes())["license"]).decode())
    if public_key:
        try:
            verify(path.read_bytes(), public_key)
        except LicenseError as exc:
            console.print(f"[red]invalid[/]: {exc}")
            raise typer.Exit(1) from None
        console.print("[green]valid[/]")
