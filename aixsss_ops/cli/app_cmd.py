"""`aixsss-ops app`: the app described in ops.toml. Thin."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import confirm, state

app = typer.Typer(help="The app ops.toml describes: write its description from a monorepo's checkout.",
                  no_args_is_help=True)


@app.command("init")
def init(
    ctx: typer.Context,
    source: Path = typer.Option(..., "--from", help="The app's checkout (a pnpm/npm monorepo with apps/api, "
                                                    "apps/worker, apps/web).", show_default=False),
    version: str = typer.Option("1.0.0", "--version", help="The release version to write."),
    write: bool = typer.Option(False, "--write", help="Write the [app] tables into ops.toml (replacing its [app])."),
) -> None:
    """Describe a pnpm/npm monorepo as the app: build steps, migrations folder, web root, api and worker."""
    from aixsss_ops.appinit import detect, render, write_into
    from aixsss_ops.config import load_config
    from aixsss_ops.errors import ConfigError

    st = state(ctx)
    found = detect(source)
    text = render(found, version)
    target = Path(st.config_path or "ops.toml")
    if write:
        confirm(st, f"replace the [app] tables of {target}?")
        before = target.read_text(encoding="utf-8") if target.exists() else None
        write_into(target, text)
        try:
            load_config(target)  # what was written must load, or the file is put back
        except ConfigError:
            if before is None:
                target.unlink()
            else:
                target.write_text(before, encoding="utf-8")
            raise
    data = {"source": str(found.source), "manager": found.manager, "build": found.build,
            "migrations": found.migrations, "web_root": found.web_root, "processes": found.processes,
            "notes": found.notes, "written": str(target) if write else None, "toml": text}

    def human(_d):
        if write:
            st.out.info(f"wrote the [app] tables of {target}")
        else:
            print(text, end="")

    st.out.emit(data, human)
