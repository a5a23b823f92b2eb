"""The pipelines `aixsss-ops ci github|gitlab` print, run: this test plays the CI runner.

For the bundled Python app (the repository's own checkout, app under `app/`) and for the Node fixture app
(tests/fixtures/nodeapp, `source = "."`), the pipeline is printed from the checkout's ops.toml, with `[ci] install`
set to a wheel of this checkout (built once per session). Then:

- the test job: its services are the session's real PostgreSQL and Redis (a fresh database per run), and each of
  its `run`/`script` steps is executed in order with bash, in a fresh copy of the checkout, with a fresh HOME (so
  the pipeline's own `python3 -m venv "$HOME/.aixsss-ops"` makes a fresh virtualenv) and the job's environment;
  every step must exit 0;
- the deploy job(s) against an embedded stack (`stack up` of the checkout's ops.toml, the "production" host of
  the self-hosted runner): a deploy that must succeed, and a deploy that fails after the release playbook switched
  to it, which the pipeline's own failure step (GitHub `if: failure()`, GitLab `when: on_failure` job) must roll back
  to the release that was live before.

What the runner here does differently from GitHub's and GitLab's, all listed below: the hosted actions (`uses:`)
are replaced by local equivalents (USES), the service addresses in the job's environment are rewritten to the
session's servers (SERVICE_REWRITES), pip installs from a wheelhouse of this checkout's dependencies built once
per session (PIP_NO_INDEX, PIP_FIND_LINKS) and npm uses the machine's ~/.npm cache, although each job has a HOME
of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.cli import EXE, run_cli
from tests.conftest import REPO, node_app_copy, node_app_toml, stack_config, state_tmpdir

pytestmark = pytest.mark.slow

PYTHON = sys.executable
SHA_OK = {"github": "a1" * 20, "gitlab": "b2" * 20}
SHA_BAD = {"github": "c3" * 20, "gitlab": "d4" * 20}
# which CI runs which deploy scenario for which app: each CI's deploy job succeeds once and fails (rolled back by
# its own failure step) once, across the two apps
SCENARIOS = {("bundled", "github"): "ok", ("bundled", "gitlab"): "fail", ("node", "gitlab"): "ok",
             ("node", "github"): "fail"}

# the hosted actions a job `uses:` and what stands for each here
USES = {
    "actions/checkout": "a fresh copy of the project (tracked files for the bundled app, the fixture for Node) as "
                        "the job's working directory",
    "actions/setup-python": "the machine's python3 on PATH (its version must be the one asked for)",
    "actions/setup-node": "the machine's node on PATH (its major version must be the one asked for)",
    "actions/upload-artifact": "the file is copied into the job's artifacts folder",
}
# the service addresses of the test job (as GitHub maps the ports / as GitLab names the service containers) and
# what the job's environment says instead: the session's servers, and a fresh database standing for POSTGRES_DB
SERVICE_REWRITES = {
    "DATABASE_URL": {"github": "127.0.0.1:5432", "gitlab": "postgres:5432", "to": "pg_server, a fresh database"},
    "REDIS_URL": {"github": "127.0.0.1:6379", "gitlab": "redis:6379", "to": "redis_server"},
}


# --- the project checkouts --------------------------------------------------------------------------------------

def _bundled_checkout(dest: Path) -> Path:
    """The repository's tracked files, as `actions/checkout` or GitLab's clone gives them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@dataclass
class Project:
    name: str  # bundled | node
    ops_toml: str  # the ops.toml committed in the project (the embedded stack's ports, [ci] install = the wheel)
    base: Path  # where the checkouts and homes go
    runner_home: Path  # HOME of the self-hosted runner the deploy jobs run on (its venv persists between jobs)
    live: list[str] = field(default_factory=list)  # the releases made live, in order
    up: tuple[subprocess.Popen, Path] | None = None  # `stack up` of the production host, and its checkout

    def host(self) -> Path:
        """The production host's checkout, once its stack is up (fails with the log when `stack up` failed)."""
        proc, host = self.up
        code = proc.wait(600)
        assert code == 0, (self.base / "stack-up.log").read_text()[-5000:]
        if not self.live:
            self.live.append(_live(host))
        return host

    def checkout(self, label: str) -> Path:
        d = self.base / f"checkout-{label}-{uuid.uuid4().hex[:6]}"
        if self.name == "bundled":
            d.mkdir()
            _bundled_checkout(d)
        else:
            node_app_copy(d.parent, d.name)
        (d / "ops.toml").write_text(self.ops_toml)
        return d


@pytest.fixture(scope="session")
def ops_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """A wheel of this checkout (what `[ci] install` names) and a wheelhouse of its dependencies, built once: the
    jobs' pip installs from it alone (resolving against the machine's package indexes each time is ~2x slower)."""
    d = tmp_path_factory.mktemp("ci-wheel")
    dist, house = d / "dist", d / "wheelhouse"
    p = subprocess.run([PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel = next(dist.glob("aixsss_ops-*.whl"))
    p = subprocess.run([PYTHON, "-m", "pip", "wheel", "-q", "-w", str(house), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return wheel, house


@pytest.fixture(scope="session")
def runner_home():
    """HOME of the one self-hosted runner every deploy job runs on: its `$HOME/.aixsss-ops` persists between jobs."""
    home = state_tmpdir("aixsss-ci-runner-")
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    with open(log, "wb") as out:
        return subprocess.Popen([EXE, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


@pytest.fixture(scope="session")
def stack_downs():
    """`stack down`s still running (the next project's jobs go on meanwhile) and the folder of each project; all
    waited for at the end, then the folders (checkouts, virtualenvs: ~300 MB per job) removed."""
    procs: list[tuple[subprocess.Popen, Path]] = []
    yield procs
    for p, base in procs:
        if p.wait(300) == 0:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", params=["bundled", "node"])
def project(request, ops_wheel, runner_home, stack_downs):
    """A project (its ops.toml describing its app) and its production host: an embedded stack, brought up in the
    background while the test jobs run (they do not use it); the deploy test waits for it (``Project.host``)."""
    wheel, _ = ops_wheel
    base = state_tmpdir(f"aixsss-ci-{request.param}-")
    stack_root = base / "stack"
    stack_root.mkdir()
    app_toml = 'source = "app"' if request.param == "bundled" else node_app_toml(Path("."))
    text = stack_config(stack_root, app_toml=app_toml, ci={"install": str(wheel)},
                        deploy={"health_timeout": 25, "warm_minutes": 30}).read_text()
    proj = Project(request.param, text, base, runner_home)
    host = proj.checkout("host")  # the folder `stack up` ran from; deploy jobs build from their own checkouts
    proj.up = (_cli(["--config", str(host / "ops.toml"), "stack", "up"], base / "stack-up.log"), host)
    try:
        yield proj
    finally:
        proj.up[0].wait(600)
        stack_downs.append((_cli(["--config", str(host / "ops.toml"), "stack", "down"], base / "stack-down.log"), base))


def _live(checkout: Path) -> str:
    r = run_cli("--json", "deploy", "status", config=checkout / "ops.toml")
    assert r.code == 0, r.output
    return r.json["colors"][r.json["active"]]["release"]


def pipeline(kind: str, checkout: Path) -> dict:
    """What `aixsss-ops ci <kind>` prints in the checkout's root (the project's ops.toml is read from there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    p = subprocess.run([str(Path(PYTHON).parent / "aixsss-ops"), "ci", kind], cwd=checkout, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return yaml.safe_load(p.stdout)


# --- the runner ---------------------------------------------------------------------------------------------------

@dataclass
class StepResult:
    name: str
    code: int | None  # None: skipped
    output: str
    seconds: float = 0.0


def runner_env(home: Path, wheelhouse: Path) -> dict[str, str]:
    """The runner machine's environment: this machine's, without the test's virtualenv and aixsss-ops settings,
    with its own HOME; pip installs from the session's wheelhouse only, npm uses the machine's cache."""
    venv_bin = str(Path(PYTHON).parent)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIXSSS_OPS_", "PYTEST", "VIRTUAL_ENV", "GITHUB_", "CI_", "PIP_"))}
    env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env.update(HOME=str(home), CI="true", NO_COLOR="1",
               NPM_CONFIG_CACHE=os.environ.get("NPM_CONFIG_CACHE", str(Path.home() / ".npm")),
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_COMPILE="1")  # no .pyc files written at install: they are written on first import anyway
    return env


def rewrite_services(kind: str, env: dict[str, str], pg_server, redis_server) -> dict[str, str]:
    """SERVICE_REWRITES applied to a test job's environment."""
    out = dict(env)
    db = urlsplit(env["DATABASE_URL"])
    assert db.netloc.endswith("@" + SERVICE_REWRITES["DATABASE_URL"][kind]), env["DATABASE_URL"]
    fresh = pg_server.create_database()
    out["DATABASE_URL"] = urlunsplit(db._replace(
        netloc=f"{pg_server.superuser}:{pg_server.password}@{pg_server.host}:{pg_server.port}", path=f"/{fresh}"))
    rd = urlsplit(env["REDIS_URL"])
    assert rd.netloc == SERVICE_REWRITES["REDIS_URL"][kind], env["REDIS_URL"]
    out["REDIS_URL"] = urlunsplit(rd._replace(netloc=f"{redis_server.host}:{redis_server.port}"))
    return out


def _expr(text: str, ctx: dict[str, str]) -> str:
    """GitHub's `${{ ... }}` for the expressions the printed workflow uses (an unknown one fails the test)."""
    def one(m: re.Match) -> str:
        key = m.group(1).strip()
        assert key in ctx, f"the runner here does not know ${{{{ {key} }}}}"
        return ctx[key]
    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def _uses(step: dict, cwd: Path, artifacts: Path) -> StepResult:
    action = step["uses"].split("@", 1)[0]
    assert action in USES, f"no local equivalent of {step['uses']}"
    if action == "actions/setup-python":
        out = subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout
        assert out.split()[1].startswith(str(step["with"]["python-version"]) + "."), out
    elif action == "actions/setup-node":
        out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        assert out.startswith(f"v{step['with']['node-version']}."), out
    elif action == "actions/upload-artifact":
        src = cwd / step["with"]["path"]
        if src.exists():
            artifacts.mkdir(exist_ok=True)
            shutil.copy2(src, artifacts / src.name)
        return StepResult(step["uses"], 0, f"kept {src.name}" if src.exists() else "no file")
    return StepResult(step["uses"], 0, USES[action])


def run_github_job(wf: dict, job_name: str, checkout: Path, env: dict[str, str], sha: str,
                   between: dict | None = None, secrets: dict | None = None) -> list[StepResult]:
    """The job's steps in order, like GitHub's runner: each `run` in `bash --noprofile --norc -eo pipefail`, in
    the checkout (or its `working-directory`), with the workflow's, job's and step's env; $GITHUB_OUTPUT,
    $GITHUB_PATH and $GITHUB_ENV honoured; after a failure only `if: failure()`/`always()` steps run.
    ``between``: step name -> a callable run after that step (a disturbance of the job)."""
    job = wf["jobs"][job_name]
    runner_temp = checkout.parent / f"runner-temp-{uuid.uuid4().hex[:6]}"
    runner_temp.mkdir()
    ctx = {"github.sha": sha, "github.ref": "refs/heads/main", "github.event_name": "push"}
    ctx.update({f"secrets.{k}": v for k, v in (secrets or {}).items()})
    for name in ("DATABASE_URL", "REDIS_URL", "API_KEY_ENCRYPTION_KEY"):
        ctx.setdefault(f"secrets.{name}", "")  # not set in this repository's secret store: empty, as on GitHub
    base = {**env, **{k: _expr(str(v), ctx) for k, v in {**wf.get("env", {}), **job.get("env", {})}.items()},
            "GITHUB_ACTIONS": "true", "GITHUB_SHA": sha, "GITHUB_REF": "refs/heads/main",
            "GITHUB_WORKSPACE": str(checkout), "RUNNER_TEMP": str(runner_temp)}
    extra_path: list[str] = []
    results: list[StepResult] = []
    failed = False
    for i, step in enumerate(job["steps"]):
        cond = step.get("if", "success()")
        if (failed and cond not in ("failure()", "always()")) or (not failed and cond == "failure()"):
            results.append(StepResult(step.get("name", step.get("uses", "")), None, "skipped"))
            continue
        if "uses" in step:
            results.append(_uses(step, checkout, checkout.parent / "artifacts"))
            continue
        files = {k: runner_temp / f"{k.lower()}-{i}" for k in ("GITHUB_OUTPUT", "GITHUB_PATH", "GITHUB_ENV")}
        for f in files.values():
            f.write_text("")
        step_env = {**base, **{k: _expr(str(v), ctx) for k, v in step.get("env", {}).items()},
                    **{k: str(v) for k, v in files.items()}}
        step_env["PATH"] = os.pathsep.join([*reversed(extra_path), base["PATH"]])
        script = runner_temp / f"step-{i}.sh"
        script.write_text(_expr(step["run"], ctx))
        cwd = checkout / step.get("working-directory", ".")
        timeout = 60 * step.get("timeout-minutes", 360)
        t0 = time.monotonic()
        p = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd, env=step_env,
                           capture_output=True, text=True, timeout=min(timeout, 600))
        results.append(StepResult(step["name"], p.returncode, p.stdout + p.stderr, time.monotonic() - t0))
        if p.returncode != 0:
            failed = True
            continue
        for line in files["GITHUB_OUTPUT"].read_text().splitlines():
            if "=" in line and "id" in step:
                k, v = line.split("=", 1)
                ctx[f"steps.{step['id']}.outputs.{k}"] = v
        extra_path += [x for x in files["GITHUB_PATH"].read_text().splitlines() if x]
        for line in files["GITHUB_ENV"].read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                base[k] = v
        if between and step["name"] in between:
            between[step["name"]]()
    return results


def run_gitlab_job(pl: dict, job_name: str, checkout: Path, env: dict[str, str], sha: str,
                   dotenv: dict[str, str] | None = None, between: dict | None = None) -> tuple[int, str, int]:
    """The job like GitLab's shell: `before_script` then `script` in one `bash` with `set -eo pipefail`, with the
    pipeline's and the job's variables and the dotenv reports of earlier jobs. Returns (exit code, output, the
    number of lines that finished). ``between``: the index of a `script` line -> a shell command run after it."""
    job = pl[job_name]
    lines = [*job.get("before_script", []), *job["script"]]
    done = checkout.parent / f"gitlab-{job_name}-{uuid.uuid4().hex[:6]}.done"
    parts = ["set -eo pipefail"]
    for n, line in enumerate(lines):
        parts += [line.rstrip("\n"), f'echo {n} >> "{done}"']
        k = n - len(job.get("before_script", []))
        if between and k in between:
            parts.append(between[k])
    script = checkout.parent / f"gitlab-{job_name}-{uuid.uuid4().hex[:6]}.sh"
    script.write_text("\n".join(parts) + "\n")
    job_env = {**env, **{k: str(v) for k, v in {**pl.get("variables", {}), **job.get("variables", {})}.items()},
               **(dotenv or {}), "GITLAB_CI": "true", "CI_COMMIT_SHA": sha, "CI_COMMIT_BRANCH": "main",
               "CI_PROJECT_DIR": str(checkout)}
    p = subprocess.run(["bash", "--noprofile", "--norc", str(script)], cwd=checkout, env=job_env,
                       capture_output=True, text=True, timeout=600)
    finished = len(done.read_text().split()) if done.exists() else 0
    return p.returncode, p.stdout + p.stderr, finished


def _timings(results: list[StepResult]) -> str:
    return ", ".join(f"{r.name.split(':')[0]} {r.seconds:.1f}s" for r in results if r.seconds >= 1)


def _report(results: list[StepResult]) -> str:
    return "\n".join(f"--- {r.name}: {r.code}\n{r.output[-3000:]}" for r in results)


# --- the test job -------------------------------------------------------------------------------------------------

@dataclass
class JobRun:
    kind: str
    checkout: Path
    home: Path
    doc: dict
    job: dict  # as run: the services' addresses rewritten
    results: list[StepResult]  # GitHub: one per step; GitLab: one for the job
    gitlab_lines_done: int = 0
    seconds: float = 0.0


def run_test_job(project: Project, kind: str, wheelhouse: Path, pg_server, redis_server) -> JobRun:
    """The test job of ``kind``'s pipeline for ``project``, run in a fresh checkout with a fresh HOME."""
    t0 = time.monotonic()
    checkout = project.checkout(f"test-{kind}")
    doc = pipeline(kind, checkout)
    home = project.base / f"home-test-{kind}"
    home.mkdir()
    env = runner_env(home, wheelhouse)
    if kind == "github":
        job = doc["jobs"]["test"]
        job["env"] = rewrite_services(kind, job["env"], pg_server, redis_server)
        results = run_github_job(doc, "test", checkout, env, SHA_OK[kind])
        return JobRun(kind, checkout, home, doc, job, results, seconds=time.monotonic() - t0)
    job = doc["test"]
    job["variables"] = rewrite_services(kind, job["variables"], pg_server, redis_server)
    code, out, finished = run_gitlab_job(doc, "test", checkout, env, SHA_OK[kind])
    return JobRun(kind, checkout, home, doc, job, [StepResult("test", code, out)], finished, time.monotonic() - t0)


@pytest.fixture(scope="module")
def ci_test_jobs(project, ops_wheel, pg_server, redis_server):
    """Both CIs' test jobs of the project, started at once in two threads (they share nothing: own checkout, HOME,
    virtualenv and database); each test below waits for its own."""
    with ThreadPoolExecutor(2) as pool:
        yield {kind: pool.submit(run_test_job, project, kind, ops_wheel[1], pg_server, redis_server)
               for kind in ("github", "gitlab")}


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_the_test_job_runs(project, kind, ci_test_jobs):
    t = ci_test_jobs[kind].result(timeout=900)
    if kind == "github":
        assert set(t.doc["jobs"]["test"]["services"]) == {"postgres", "redis"}
        assert t.results and all(r.code == 0 for r in t.results), _report(t.results)
        ran = [r.name for r in t.results]
        assert ("actions/setup-node@v4" in ran) == (project.name == "node")
        assert sum(n.startswith("Build ") for n in ran) == (2 if project.name == "node" else 0)
        installed = next(r for r in t.results if r.name == "Install aixsss-ops").output
        print(f"{project.name} github test job steps: {_timings(t.results)}")
    else:
        assert [s["alias"] for s in t.job["services"]] == ["postgres", "redis"]
        assert t.results[0].code == 0, t.results[0].output[-6000:]
        assert t.gitlab_lines_done == len(t.job["before_script"]) + len(t.job["script"])
        assert t.job["image"].startswith("nikolaik/python-nodejs" if project.name == "node" else "python:")
        installed = t.results[0].output
    # the pipeline's own virtualenv, with this checkout's wheel in it, did the work
    assert (t.home / ".aixsss-ops" / "bin" / "aixsss-ops").exists()
    from aixsss_ops import __version__
    assert f"aixsss-ops {__version__}" in installed
    # the migrations of the app's description were applied to the service's database
    db = (t.job["env"] if kind == "github" else t.job["variables"])["DATABASE_URL"]
    import psycopg

    with psycopg.connect(db.split("?", 1)[0]) as c:
        applied = c.execute('SELECT count(*) FROM "_prisma_migrations" WHERE finished_at IS NOT NULL').fetchone()[0]
    src = t.checkout / ("app/migrations" if project.name == "bundled" else "apps/api/prisma/migrations")
    assert applied == len([p for p in src.iterdir() if p.is_dir()]) > 0
    if project.name == "node":
        assert (t.checkout / "apps" / "api" / "dist" / "main.js").is_file()  # the description's build steps ran
    print(f"{project.name} {kind} test job: {t.seconds:.1f}s")


# --- the deploy job -----------------------------------------------------------------------------------------------

def _late_migration(checkout: Path, project: Project) -> Path:
    """A migration that appears in the checkout after the release playbook ran: the job's next step (every
    migration applied) fails, after the new release was switched live."""
    folder = "app/migrations" if project.name == "bundled" else "apps/api/prisma/migrations"
    return checkout / folder / "99990101000000_ci_late" / "migration.sql"


def test_the_deploy_job_deploys_or_rolls_back(project, ops_wheel):
    """Both CIs' deploy jobs, in one test per project so that they run in order against its stack."""
    project.host()
    for kind in ("github", "gitlab"):
        t0 = time.monotonic()
        scenario = SCENARIOS[(project.name, kind)]
        sha = SHA_OK[kind] if scenario == "ok" else SHA_BAD[kind]
        checkout = project.checkout(f"deploy-{kind}")
        doc = pipeline(kind, checkout)
        env = runner_env(project.runner_home, ops_wheel[1])
        before = project.live[-1]
        late = _late_migration(checkout, project)

        def disturb(late: Path = late) -> None:
            late.parent.mkdir()
            late.write_text('CREATE TABLE "CiLate" (id integer);\n')

        if kind == "github":
            between = {"Deploy": disturb} if scenario == "fail" else None
            results = run_github_job(doc, "deploy", checkout, env, sha, between=between)
            by = {r.name: r for r in results}
            if scenario == "ok":
                assert all(r.code in (0, None) for r in results), _report(results)
                assert by["Roll back on failure"].code is None  # skipped: nothing failed
            else:
                assert by["Deploy"].code == 0, _report(results)
                assert by["Migrations all applied"].code == 3, _report(results)
                rb = by["Roll back on failure"]
                assert rb.code == 0 and "nothing to do" not in rb.output, _report(results)
            assert by["Record the live release"].code == 0
            run = json.loads((checkout.parent / "artifacts" / "release-run.json").read_text())
            (checkout.parent / "artifacts" / "release-run.json").unlink()
        else:
            code, out, _ = run_gitlab_job(doc, "migrate-status-gate", checkout, env, sha)
            assert code == 0, out[-6000:]
            dotenv = dict(line.split("=", 1) for line in (checkout / "live.env").read_text().splitlines() if line)
            assert dotenv == {"LIVE_RELEASE": before}
            between = {0: f"mkdir {late.parent} && echo 'CREATE TABLE \"CiLate\" (id integer);' > {late}"} \
                if scenario == "fail" else None
            code, out, finished = run_gitlab_job(doc, "deploy", checkout, env, sha, between=between)
            installs = len(doc["deploy"]["before_script"])
            if scenario == "ok":
                assert code == 0, out[-6000:]
            else:
                assert code == 3 and finished == installs + 1, out[-6000:]  # the playbook passed, the status not
                rcode, rout, _ = run_gitlab_job(doc, "rollback", checkout, env, sha, dotenv=dotenv)
                assert rcode == 0 and "nothing to do" not in rout, rout[-6000:]
                assert f'"release": "{before}"' in rout or before in rout
            run = json.loads((checkout / "release-run.json").read_text())
        assert run["ok"] is True and run["playbook"]["name"] == "release", run  # the release playbook passed
        deployed = next(st for st in run["steps"] if st["id"] == "deploy")["output"]["release"]
        assert deployed.startswith(sha + "-")
        now = _live(checkout)
        if scenario == "ok":
            assert now.startswith(sha + "-") and now != before
            project.live.append(now)
        else:
            assert now == before, f"the failure step did not roll back: {now} live, {before} before"
        print(f"{project.name} {kind} deploy job ({scenario}): {time.monotonic() - t0:.1f}s")
