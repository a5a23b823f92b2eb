"""`aixsss-ops ci`: print a CI pipeline (install, build, test, migrate status gate, deploy, rollback on failure) for
the app ops.toml describes."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import state

app = typer.Typer(help="Print a CI pipeline that builds, tests, gates on migrations, deploys and rolls back.",
                  no_args_is_help=True)

Branch = typer.Option("main", "--branch", help="The branch that deploys.")
Runner = typer.Option("self-hosted", "--runner", help="Runner label of the deploy job (it runs where aixsss-ops operates).")
Install = typer.Option(
    None, "--install", show_default=False,
    help="The pip requirement of aixsss-ops every job installs: a version pin (aixsss-ops==0.3.0), "
         "'aixsss-ops @ git+https://host/aixsss-ops.git@v0.3.0', or a wheel path or URL. Default: ci.install "
         "in ops.toml, else exactly the version that prints the pipeline (aixsss-ops==VERSION).")
Source = typer.Option(
    None, "--source", show_default=False,
    help="The app's folder in the repository, relative to its root (default: app.source of ops.toml); the build "
         "steps run in it and its app.migrations folder is gated.")
Test = typer.Option(
    [], "--test", show_default=False,
    help="A command of the app's own tests (a shell line, e.g. 'pnpm -r test'), run in the test job after the "
         "migrations; repeatable.")


def _print(ctx: typer.Context, kind: str, branch: str, runner: str, install: str | None, source: str | None,
           tests: list[str]) -> None:
    from aixsss_ops import __version__, ci

    st = state(ctx)
    opts = ci.options(st.config, Path.cwd(), version=__version__, branch=branch, runner=runner, install=install,
                      source=source, tests=tuple(tests))
    doc = ci.github(opts) if kind == "github" else ci.gitlab(opts)
    st.out.emit(doc, lambda d: typer.echo(ci.dump(d), nl=False))


@app.command("github")
def github(ctx: typer.Context, branch: str = Branch, runner: str = Runner, install: str | None = Install,
           source: str | None = Source, test: list[str] = Test) -> None:
    """A GitHub Actions workflow (save as .github/workflows/release.yml) for the app ops.toml describes.

    Run it in the repository root: paths in the workflow are relative to it."""
    _print(ctx, "github", branch, runner, install, source, test)


@app.command("gitlab")
def gitlab(ctx: typer.Context, branch: str = Branch, runner: str = Runner, install: str | None = Install,
           source: str | None = Source, test: list[str] = Test) -> None:
    """A GitLab CI pipeline (save as .gitlab-ci.yml) for the app ops.toml describes.

    Run it in the repository root: paths in the pipeline are relative to it."""
    _print(ctx, "gitlab", branch, runner, install, source, test)
