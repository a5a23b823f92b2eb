"""`aixsss-ops compose`: docker compose files equivalent to what the docker runtime creates."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import state

app = typer.Typer(help="Docker compose files for users who run the stack with compose.", no_args_is_help=True)


@app.command("render")
def render(
    ctx: typer.Context,
    out: Path = typer.Option(None, "--out", "-o", help="Folder to write into (default: compose/ beside ops.toml)."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 3 when the files differ from ops.toml."),
) -> None:
    """Write compose/infra.yml, compose/app.yml (COLOR variable) and compose/proxy.yml from ops.toml."""
    from aixsss_ops.compose import render as render_mod
    from aixsss_ops.errors import CheckFailed

    st = state(ctx)
    cfg = st.config
    folder = out or cfg.base_dir / "compose"
    files = render_mod.render_files(cfg)
    stale = render_mod.stale(folder, files)
    if check:
        st.out.emit({"folder": str(folder), "stale": stale}, lambda d: st.out.info(
            f"stale: {', '.join(stale)}" if stale else "compose files are in sync with ops.toml"))
        if stale:
            raise CheckFailed(f"compose files out of sync with ops.toml: {', '.join(stale)}",
                              hint="run 'aixsss-ops compose render'")
        return
    written = render_mod.write(folder, files)
    st.out.emit({"folder": str(folder), "written": written, "files": sorted(files)},
                lambda d: st.out.info(f"wrote {', '.join(written) or 'nothing (up to date)'} in {folder}"))
