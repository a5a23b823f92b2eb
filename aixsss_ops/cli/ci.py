"""`aixsss-ops ci`: print a CI pipeline (install, build, test, migrate status gate, deploy, rollback on failure)."""

from __future__ import annotations

import typer

from aixsss_ops.cli.common import state

app = typer.Typer(help="Print a CI pipeline that builds, tests, gates on migrations, deploys and rolls back.",
                  no_args_is_help=True)

Branch = typer.Option("main", "--branch", help="The branch that deploys.")
Source = typer.Option("app", "--source", help="App source folder the release is built from; its migrations/ is gated.")
Runner = typer.Option("self-hosted", "--runner", help="Runner label of the deploy job (it runs where aixsss-ops operates).")


def _print(ctx: typer.Context, kind: str, branch: str, source: str, runner: str) -> None:
    from aixsss_ops import ci

    st = state(ctx)
    opts = ci.Options(branch=branch, source=source, runner=runner)
    doc = ci.github(opts) if kind == "github" else ci.gitlab(opts)
    st.out.emit(doc, lambda d: typer.echo(ci.dump(d), nl=False))


@app.command("github")
def github(ctx: typer.Context, branch: str = Branch, source: str = Source, runner: str = Runner) -> None:
    """A GitHub Actions workflow (save as .github/workflows/release.yml)."""
    _print(ctx, "github", branch, source, runner)


@app.command("gitlab")
def gitlab(ctx: typer.Context, branch: str = Branch, source: str = Source, runner: str = Runner) -> None:
    """A GitLab CI pipeline (save as .gitlab-ci.yml)."""
    _print(ctx, "gitlab", branch, source, runner)
