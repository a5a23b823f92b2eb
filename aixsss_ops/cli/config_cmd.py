"""`aixsss-ops config`: the effective configuration."""

from __future__ import annotations

import typer

from aixsss_ops.cli.common import state

app = typer.Typer(help="Show the effective configuration (ops.toml + AIXSSS_OPS_* overrides).", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print the effective configuration, every secret masked."""
    st = state(ctx)
    cfg = st.config
    data = cfg.public_dict()

    def human(d: dict) -> None:
        from aixsss_ops.output import redact

        rows = []

        def walk(prefix: str, v) -> None:
            if isinstance(v, dict):
                for k, sub in v.items():
                    walk(f"{prefix}.{k}" if prefix else k, sub)
            else:
                rows.append((prefix, v))

        walk("", redact(d))
        st.out.table(f"configuration ({cfg.config_path or 'defaults'})", ["key", "value"], rows)

    st.out.emit(data, human)
