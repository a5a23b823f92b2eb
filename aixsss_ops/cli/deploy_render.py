"""How a deploy, switch or rollback result is shown: shared by the Typer command and the fast path."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aixsss_ops.cli.session import State
    from aixsss_ops.deploy.engine import DeployResult


def show_deploy_result(st: State, res: DeployResult) -> None:
    """The result of a deploy, switch or rollback: one JSON document, or a line per fact."""

    def human(_d):
        if res.noop:
            st.out.console.print(res.plan[0] if res.plan else "nothing to do")
            return
        if res.dry_run:
            st.out.console.print(f"plan for {res.release} (nothing changed):")
            for i, step in enumerate(res.plan, 1):
                st.out.console.print(f"  {i}. {step}")
        else:
            st.out.console.print(
                f"{res.release} is live on {res.color} (was {res.previous_color}); "
                f"switch {res.switch_seconds}s, total {res.seconds}s"
            )
            if res.migrations_applied:
                st.out.console.print(f"migrations applied: {', '.join(res.migrations_applied)}")
        for w in res.warnings:
            st.out.warn(w)

    st.out.emit(res.to_dict(), human)
