"""`aixsss-ops images`: container images for the docker runtime (built without a registry), and `images push` into
the registry the swarm's nodes pull from."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import state

app = typer.Typer(help="Build the docker runtime's images: the Debian base (debootstrap) and the app per release; "
                       "push one into the swarm's registry.", no_args_is_help=True)


@app.command("base")
def base(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Rebuild even when the images exist."),
    wheels_dir: Path = typer.Option(None, "--wheels-dir", help="Keep the project's wheels in this folder."),
) -> None:
    """The Debian base image (debootstrap + import) and the runtime image (base + the project's wheels)."""
    from aixsss_ops.runtime import docker_images
    from aixsss_ops.runtime.docker_engine import connect

    st = state(ctx)
    cfg = st.config
    client = connect(cfg)
    res = {
        "base": docker_images.build_base(client, cfg, st.out.info, force=force),
        "runtime": docker_images.build_runtime(client, cfg, st.out.info, wheels_dir=wheels_dir, force=force),
    }
    st.out.emit(res, lambda d: [st.out.console.print(f"{k}: {v['image']} ({'built' if v['built'] else 'kept'})")
                                for k, v in d.items()])


@app.command("app")
def app_image(
    ctx: typer.Context,
    version: str = typer.Option(None, "--version", help="Release version (default: app.version of ops.toml)."),
    source: Path = typer.Option(None, "--source", help="App source folder (default: app.source of ops.toml)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the image exists."),
) -> None:
    """The app image of a release (runtime image + the release's source), tagged with the release id."""
    from aixsss_ops import releases
    from aixsss_ops.context.layout import Layout
    from aixsss_ops.runtime import docker_images
    from aixsss_ops.runtime.docker_engine import connect

    st = state(ctx)
    cfg = st.config
    client = connect(cfg)
    release, _ = releases.build(source or cfg.app_source, version or cfg.app.version, Layout(cfg.state).releases,
                                steps=cfg.app.build, say=st.out.info)
    res = {"release": release.id, **docker_images.build_app(client, cfg, release.path, release.version, st.out.info,
                                                            force=force)}
    st.out.emit(res, lambda d: st.out.console.print(f"{d['image']} ({'built' if d['built'] else 'kept'})"))


@app.command("push")
def push(
    ctx: typer.Context,
    target: str = typer.Argument(None, metavar="[RELEASE|IMAGE]",
                                 help="A release id (its app image) or an image; default: the live release."),
) -> None:
    """Push an app image into the registry the swarm's nodes pull from ([swarm] registry; the embedded one is
    started first) and print the reference services name (with its digest)."""
    from aixsss_ops.usecases import registry

    st = state(ctx)
    res = registry.push(st.deployment, target, st.out.info)
    st.out.emit(res, lambda d: st.out.console.print(d["reference"], highlight=False, soft_wrap=True))
