"""`aixsss-ops stack`: the embedded local stack."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the embedded stack: postgres, redis, s3 (SeaweedFS), nginx and the app.", no_args_is_help=True)
