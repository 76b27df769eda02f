"""jobline on a two-node Ray cluster started with `ray start`, deployed as deploy/README.md says.

One cluster for the whole module (it takes a while to start): a head offering the
ledger's and processors' resources, a worker offering the gateways' and processors'.
The nodes hold the secrets in their own environment (as `ray start` from an environment
file would); the operator's commands run elsewhere, in another directory, without them.
Results go to a real S3-compatible server (moto) on loopback; the vendors are the fakes,
run by `jobline fake-vendors`; metrics are read by the real Prometheus.

Every `ray start`, `jobline`, `ray job submit` and backup command is taken from
deploy/README.md as shown (``guide_command``), with this machine's paths and ports
(``Stage.run_guide``); `ray start` gets private ports and a private `--temp-dir` added.

The steps, in order (each test needs the ones before):

1. `serve` refuses to start a new, empty ledger where the config says one exists;
2. `jobline init` creates it; `serve --detach` deploys the app; `status` shows the
   ledger on the head at its absolute path and the gateway on the worker; a second
   `serve` of the same app is refused;
3. jobs complete; their results are in the bucket and come back through the worker's
   gateway; another account cannot see them (I6);
4. Prometheus, with deploy/prometheus-cluster.yml, finds every role and both nodes;
5. the guide's online backup holds every job; `stop` drains and checkpoints: a copy of
   the `.db` file alone then holds every job;
6. the same deployment through `ray job submit`, nothing secret in the job's metadata;
   a third node joins with the gateway resource and gets its gateways (scaling);
7. the first worker node is lost while jobs run: every job ends, I1-I6 hold, and the
   third node's gateways answer throughout;
8. no secret appears in any log, any command's output, or Ray's job and actor records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from loadtests.chaos.checks import Expectations, read_jobs, vendors_against_ledger
from runtime.config import load_config
from runtime.invariants import check_invariants
from tests.cluster.raystart import VENV_BIN, RayStartCluster, free_ports
from vendors_fake.png import expected_png

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
JOBLINE = VENV_BIN / "jobline"
TERMINAL = {"completed", "failed", "canceled"}
BUCKET = "jobline-cluster-test"
SERVE_LINE = "jobline --config /etc/jobline/jobline.toml serve --detach"
STOP_LINE = "jobline --config /etc/jobline/jobline.toml stop"
SECRETS = {  # known values, to look for wherever jobline writes
    "JOBLINE_ADMIN_TOKEN": "admin-7c1e0d5b-never-print-me",
    "FAL_KEY": "fal-key-4b8f2a91-never-print-me",
    "REPLICATE_API_TOKEN": "r8_tok-93d1c6e7-never-print-me",
    "REPLICATE_WEBHOOK_SECRET": "whsec_bmV2ZXItcHJpbnQtdGhpcy1zZWNyZXQtcGxlYXNl",
    "AWS_ACCESS_KEY_ID": "AKIA5NEVERPRINTME77",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0d9e8f7a-never-print-me",
}
GUIDE = (DEPLOY / "README.md").read_text()


def guide_commands(start: str) -> list[str]:
    """The commands of deploy/README.md's ``sh`` blocks that start with ``start``, each
    without its trailing comment: what an operator would type."""
    found, in_block = [], False
    for line in GUIDE.splitlines():
        text = line.strip()
        if text.startswith("```"):
            in_block = not in_block and text == "```sh"
            continue
        if in_block and text.startswith(start):
            found.append(text.split("  #", 1)[0].strip())
    assert found, f"deploy/README.md shows no command starting with {start!r}"
    return found


def guide_command(start: str) -> str:
    return guide_commands(start)[0]


def resources_of(command: str) -> dict[str, float]:
    match = re.search(r"--resources='([^']*)'", command)
    assert match, command
    return dict(json.loads(match.group(1)))


SERVE = guide_command(SERVE_LINE)
STOP = guide_command(STOP_LINE)
HEAD = resources_of(guide_command("ray start --head"))
WORKER, JOINING = (resources_of(c) for c in guide_commands("ray start --address=HEAD_IP:6379"))


@dataclass
class Stage:
    root: Path
    cluster: RayStartCluster
    config_path: Path
    operator_dir: Path
    s3: Any
    gateway_url: str
    fake_urls: dict[str, str]
    database: Path
    outputs: list[str] = field(default_factory=list)  # every command's output, for step 8
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> input
    api_key: str = ""
    app_running: bool = False
    observer: subprocess.Popen[str] | None = None
    roles: list[str] = field(default_factory=list)

    def operator_env(self) -> dict[str, str]:
        """The operator's shell: joins the cluster, holds no jobline secret."""
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        return {**env, **self.cluster.ray_env}

    def jobline(self, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(
            [str(JOBLINE), "--config", str(self.config_path), *args],
            cwd=self.operator_dir,
            env=self.operator_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.outputs += [done.stdout, done.stderr]
        print(f"jobline {' '.join(args)}: {time.monotonic() - started:.1f}s")
        return done

    def run_guide(
        self, command: str, *extra: str, timeout: float = 240.0
    ) -> subprocess.CompletedProcess[str]:
        """A command of deploy/README.md as shown, with this machine's paths and ports."""
        for old, new in (
            ("/etc/jobline/jobline.toml", str(self.config_path)),
            ("/var/lib/jobline", f"{self.root}/var"),
            ("/var/backups/jobline", f"{self.root}/backups"),
            ("http://127.0.0.1:8265", self.cluster.dashboard_url),
            ("HEAD_IP:6379", self.cluster.address),
        ):
            command = command.replace(old, new)
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", " ".join([command, *extra])],
            cwd=self.operator_dir,
            env=self.operator_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.outputs += [done.stdout, done.stderr]
        print(f"{command[:60]} {' '.join(extra)}: {time.monotonic() - started:.1f}s")
        return done

    def ray(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        done = self.cluster.ray(*args, timeout=timeout)
        self.outputs += [done.stdout, done.stderr]
        return done

    def http(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        token = key or self.api_key
        request = urllib.request.Request(
            self.gateway_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                data = answer.read()
                status = answer.status
                kind = answer.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            data, status, kind = exc.read(), exc.code, exc.headers.get_content_type()
        return status, (json.loads(data) if kind == "application/json" else data)


def cluster_config(text: str, root: Path, gateway_port: int, s3: str, fakes: dict[str, str]) -> str:
    """deploy/jobline.cluster.toml as shipped, pointed at this machine's servers."""
    changes = [
        ('host = "0.0.0.0"', 'host = "127.0.0.1"'),
        ("port = 8000", f"port = {gateway_port}"),
        ('"https://jobline.example.com"', f'"http://127.0.0.1:{gateway_port}"'),
        ("/var/lib/jobline", f"{root}/var"),
        ("/var/log/jobline", f"{root}/log"),
        ('bucket = "jobline-results"', f'bucket = "{BUCKET}"'),
        ('"https://ACCOUNT_ID.r2.cloudflarestorage.com"', f'"{s3}"'),
        ('region = "auto"', 'region = "us-east-1"'),
        ('serve = "redirect"', 'serve = "stream"'),
        # The fakes serve outputs on loopback, which a vendor's outputs may come from
        # only when listed.
        ('"https://queue.fal.run"', f'"{fakes["fal"]}"\noutput_hosts = ["127.0.0.1"]'),
        ("https://rest.alpha.fal.ai", fakes["fal"]),
        ('"https://api.replicate.com"', f'"{fakes["replicate"]}"\noutput_hosts = ["127.0.0.1"]'),
        ("interval = 15.0", "interval = 1.0"),
        ("poll_interval = 1.0", "poll_interval = 0.3"),
        ("base = 1.0", "base = 0.1"),
    ]
    for old, new in changes:
        assert old in text, f"deploy/jobline.cluster.toml no longer has {old!r}"
        text = text.replace(old, new)
    return text


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.5, show: Any = None) -> Any:
    """``check()`` until it is true; on timeout the assertion shows ``show()`` (what the
    cluster looked like)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {show()}" if show is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f}s{seen}")
        time.sleep(interval)


def http_json(url: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def answers(url: str) -> bool:
    try:
        http_json(url)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def stage() -> Iterator[Stage]:
    root = Path(tempfile.mkdtemp(prefix="jl-", dir="/tmp"))  # short: Ray's socket paths
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3_url = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=SECRETS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SECRETS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=BUCKET)
    gateway_port, fal_port, replicate_port = free_ports(3)
    fakes = {
        "fal": f"http://127.0.0.1:{fal_port}",
        "replicate": f"http://127.0.0.1:{replicate_port}",
    }
    (root / "etc").mkdir()
    config_path = root / "etc" / "jobline.toml"
    text = (DEPLOY / "jobline.cluster.toml").read_text()
    config_path.write_text(cluster_config(text, root, gateway_port, s3_url, fakes))
    cluster = RayStartCluster(root, SECRETS)
    fake_log = (root / "fakes.log").open("wb")
    fake_vendors = subprocess.Popen(
        [str(JOBLINE), "fake-vendors", "--config", str(config_path), "--profile", "calm"],
        env=cluster.node_env,  # the fakes accept the keys the nodes hold
        stdout=fake_log,
        stderr=subprocess.STDOUT,
    )
    operator_dir = root / "operator"
    operator_dir.mkdir()
    database = load_config(config_path).storage.database
    stage = Stage(
        root,
        cluster,
        config_path,
        operator_dir,
        s3,
        f"http://127.0.0.1:{gateway_port}",
        fakes,
        database,
    )
    try:
        for url in fakes.values():
            wait_for(lambda u=url: answers(f"{u}/_control/stats"), 60, "fake vendors")
        cluster.start(HEAD, {"worker": WORKER})
        yield stage
    finally:
        if stage.observer is not None:
            stage.observer.kill()
            stage.observer.wait(timeout=30)
        if stage.app_running:
            stage.jobline("stop", timeout=120)
        cluster.shutdown()
        fake_vendors.terminate()
        fake_vendors.wait(timeout=30)
        fake_log.close()
        moto.stop()
        if not os.environ.get("JOBLINE_KEEP_TEST_CLUSTER"):  # set it to look at Ray's logs
            shutil.rmtree(root, ignore_errors=True)


def status_rows(stage: Stage) -> dict[str, dict[str, Any]]:
    """What `jobline status --json` shows, from a driver that stays joined (observer.py)."""
    if stage.observer is None:
        stage.observer = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "tests.cluster.observer", str(stage.config_path)],
            cwd=ROOT,
            env=stage.operator_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    assert stage.observer.stdin is not None and stage.observer.stdout is not None
    stage.observer.stdin.write("status\n")
    stage.observer.stdin.flush()
    answer = json.loads(stage.observer.stdout.readline())
    assert isinstance(answer, list), answer
    return {row["role"]: row for row in answer}


def notices(stage: Stage) -> str:
    """Every role's notices and the status: what an operator would look at."""
    logs = stage.jobline("logs")
    return f"{logs.stdout}\n{logs.stderr}\n{json.dumps(status_rows(stage), indent=1)}"


def cli_status_rows(stage: Stage) -> dict[str, dict[str, Any]]:
    done = stage.run_guide(
        guide_command("jobline --config /etc/jobline/jobline.toml status"), "--json"
    )
    assert done.returncode in (0, 1), done.stderr
    return {row["role"]: row for row in json.loads(done.stdout)}


def submit(stage: Stage, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        model = "flux-schnell" if i % 2 else "sdxl"
        body = {"model": model, "input": {"prompt": f"{tag} {i}", "seed": i}}
        status, job = stage.http("POST", "/v1/jobs", body)
        assert status == 202, job
        stage.jobs[job["id"]] = body["input"]
        ids.append(job["id"])
    return ids


# --- 1 and 2: the ledger, placed and never started empty ---------------------------------


def test_serve_refuses_a_new_empty_ledger_where_the_config_says_one_exists(stage: Stage) -> None:
    done = stage.run_guide(SERVE)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the ledger {stage.database} does not exist" in done.stderr
    assert "create_ledger is false" in done.stderr
    assert "Traceback" not in done.stderr
    assert not stage.database.exists()
    # Nothing was left behind: the next serve would refuse leftovers by name.


def test_init_then_serve_places_the_ledger_on_the_head_and_the_gateway_on_the_worker(
    stage: Stage,
) -> None:
    done = stage.run_guide(guide_command("jobline --config /etc/jobline/jobline.toml init"))
    assert done.returncode == 0 and f"created the ledger {stage.database}" in done.stderr
    done = stage.run_guide(SERVE)
    assert done.returncode == 0, done.stdout + done.stderr
    stage.app_running = True
    assert "all ready" in done.stdout
    rows = cli_status_rows(stage)
    stage.roles = list(rows)
    assert rows["ledger"]["head"] is True
    assert rows["ledger"]["detail"] == str(stage.database)  # absolute, as configured
    assert stage.database.is_absolute() and stage.database.is_file()
    assert not (stage.operator_dir / "var").exists()  # nothing relative to any directory
    gateways = [row for role, row in rows.items() if role.startswith("gateway-")]
    replicas = load_config(stage.config_path).gateway.replicas
    assert len(gateways) == replicas and all(row["head"] is False for row in gateways)
    assert all(row["ready"] and row["state"] == "ALIVE" for row in rows.values())
    again = stage.run_guide(SERVE)
    assert again.returncode == 3
    assert "already runs on this Ray cluster" in again.stderr


# --- 3 and 4: jobs, results in S3, metrics from every node --------------------------------


def test_jobs_store_results_in_s3_and_the_workers_gateway_serves_them(stage: Stage) -> None:
    status, account = stage.http(
        "POST",
        "/v1/accounts",
        {"name": "acme", "credits": 1000},
        key=SECRETS["JOBLINE_ADMIN_TOKEN"],
    )
    assert status == 201, account
    stage.api_key = account["api_key"]
    ids = submit(stage, 6, "cluster")

    def ended() -> dict[str, Any] | None:
        jobs = {i: stage.http("GET", f"/v1/jobs/{i}")[1] for i in ids}
        return jobs if all(j["status"] in TERMINAL for j in jobs.values()) else None

    jobs = wait_for(ended, 90, "jobs ending")
    assert {j["status"] for j in jobs.values()} == {"completed"}, jobs
    for job_id in ids:
        status, body = stage.http("GET", f"/v1/jobs/{job_id}/result")
        assert status == 200 and body == expected_png(stage.jobs[job_id])
    stored = stage.s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    names = [item["Key"] for item in stored.get("Contents", [])]
    assert all(any(job_id in name for name in names) for job_id in ids), names
    status, other = stage.http(
        "POST",
        "/v1/accounts",
        {"name": "other", "credits": 10},
        key=SECRETS["JOBLINE_ADMIN_TOKEN"],
    )
    assert status == 201
    assert stage.http("GET", f"/v1/jobs/{ids[0]}", key=other["api_key"])[0] == 404  # I6
    assert stage.http("GET", f"/v1/jobs/{ids[0]}/result", key=other["api_key"])[0] == 404


def test_prometheus_finds_every_role_and_every_node(stage: Stage) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; CI must run this test")
        pytest.skip("prometheus is not installed (`make prometheus`)")
    config = (DEPLOY / "prometheus-cluster.yml").read_text()
    config = config.replace("/var/lib/jobline", f"{stage.root}/var")
    config = config.replace("/tmp/ray", str(stage.cluster.temp_dir))
    config = config.replace("scrape_interval: 15s", "scrape_interval: 2s")
    config = config.replace("evaluation_interval: 15s", "evaluation_interval: 2s")
    config = config.replace("scrape_timeout: 10s", "scrape_timeout: 2s")
    path = stage.root / "prometheus.yml"
    path.write_text(config)
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={path}",
            f"--storage.tsdb.path={stage.root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query?query="
    try:

        def query(expression: str) -> list[dict[str, Any]]:
            try:
                answer = http_json(api + urllib.parse.quote(expression))
            except OSError:
                return []
            return list(answer["data"]["result"])

        roles = set(stage.roles)
        wait_for(
            lambda: {r["metric"]["role"] for r in query("jobline_actor_up == 1")} >= roles,
            60,
            "every role scraped",
        )
        series = query("jobline_actor_up")
        assert {r["metric"]["actor"] for r in series} == {r["metric"]["role"] for r in series}
        assert all(r["metric"]["node"] for r in series)
        # Ray's own file lists every node's metrics agent (and the head's dashboard), once
        # Ray's dashboard rewrote it after every node joined (it may not have yet when
        # jobline's roles are first scraped).
        agents = {str(node.metrics_port) for node in stage.cluster.nodes}
        sd_file = stage.cluster.temp_dir / "prom_metrics_service_discovery.json"

        def listed() -> set[str]:
            try:
                sd = json.loads(sd_file.read_text())
            except (OSError, ValueError):
                return set()
            return {t.rsplit(":", 1)[1] for group in sd for t in group["targets"]}

        wait_for(lambda: agents <= listed(), 60, "every node's agent in Ray's file", show=listed)
        wait_for(
            lambda: (
                {r["metric"]["instance"].rsplit(":", 1)[1] for r in query('up{job="ray"} == 1')}
                >= agents
            ),
            60,
            "every Ray node's metrics scraped",
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- 5: stop -------------------------------------------------------------------------------


def test_backup_then_stop_so_the_db_file_alone_holds_everything(stage: Stage) -> None:
    (stage.root / "backups").mkdir()
    backup = stage.run_guide(guide_command("python3 -c 'import sqlite3"))  # while it runs
    assert backup.returncode == 0, backup.stderr
    check = stage.run_guide(guide_command("jobline check --database"))
    assert check.returncode == 0 and "0 violation(s)" in check.stdout, check.stdout + check.stderr
    (copied,) = (stage.root / "backups").iterdir()
    with sqlite3.connect(f"file:{copied}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (len(stage.jobs),)
    done = stage.run_guide(STOP)
    assert done.returncode == 0, done.stderr
    stage.app_running = False
    assert "drained" in done.stderr and "checkpointed" in done.stderr
    wal = stage.database.with_name(stage.database.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    copy = stage.root / "backup" / "jobline.db"
    copy.parent.mkdir()
    shutil.copyfile(stage.database, copy)  # the .db alone
    with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
    assert count == len(stage.jobs)
    assert check_invariants(copy) == []


# --- 6: ray job submit --------------------------------------------------------------------


def test_ray_job_submit_deploys_it_with_nothing_secret_in_the_job(stage: Stage) -> None:
    done = stage.run_guide(guide_command("ray job submit"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout + done.stderr
    assert "all ready" in done.stdout + done.stderr  # the job's log: serve's status table
    stage.app_running = True
    # The job's record (`ray list jobs --detail`) is checked with every other in step 8.


def test_a_node_that_joins_with_the_gateway_resource_gets_its_gateways(stage: Stage) -> None:
    joined = stage.cluster.add_worker("worker-2", JOINING)

    def gateways_on_two_workers() -> dict[str, dict[str, Any]] | None:
        rows = status_rows(stage)
        nodes = {
            row["node_id"]
            for role, row in rows.items()
            if role.startswith("gateway-") and row["ready"]
        }
        return rows if len(nodes) == 2 else None

    rows = wait_for(
        gateways_on_two_workers, 90, "gateways on the new node", 2.0, show=lambda: notices(stage)
    )
    assert joined.alive()
    assert all(row["head"] is False for role, row in rows.items() if role.startswith("gateway-"))


# --- 7: losing the worker node ------------------------------------------------------------


def test_losing_the_worker_node_ends_every_job_with_the_invariants_held(stage: Stage) -> None:
    before = status_rows(stage)
    on_worker = sorted(role for role, row in before.items() if row["head"] is False)
    slow = {"run_time": {"kind": "uniform", "low": 2.0, "high": 4.0}}
    for url in stage.fake_urls.values():
        http_json(f"{url}/_control/profile", slow)
    ids = submit(stage, 8, "lost")
    wait_for(
        lambda: any(read_jobs(stage.database)[i].status == "processing" for i in ids),
        30,
        "a job at a vendor",
        0.1,
    )
    (worker,) = [node for node in stage.cluster.nodes if node.name == "worker"]
    worker.kill()
    # The gateways of the node that joined in step 6 still answer, for every job.
    status, job = stage.http("GET", f"/v1/jobs/{ids[0]}")
    assert status == 200 and job["id"] == ids[0]

    def all_ended() -> bool:
        jobs = read_jobs(stage.database)
        return all(jobs[i].status in TERMINAL for i in ids)

    wait_for(all_ended, 150, f"every job ending after losing the worker ({on_worker})", 1.0)
    assert check_invariants(stage.database) == []  # I1, I2, I5 from the ledger
    jobs = read_jobs(stage.database)
    assert {jobs[i].status for i in ids} <= {"completed", "failed"}
    config = load_config(stage.config_path)
    fakes = {name: http_json(f"{url}/_control/stats") for name, url in stage.fake_urls.items()}
    assert list(vendors_against_ledger(config, fakes, jobs, Expectations())) == []  # I4, I5

    def lost_gateways_gone() -> dict[str, dict[str, Any]] | None:
        rows = status_rows(stage)
        nodes = {row["node_id"] for role, row in rows.items() if role.startswith("gateway-")}
        return rows if len(nodes) == 1 else None

    after = wait_for(lost_gateways_gone, 90, "the lost node's gateways removed", 3.0)
    assert after["ledger"]["head"] and after["ledger"]["ready"]
    assert all(stage.http("GET", f"/v1/jobs/{i}")[1]["status"] in TERMINAL for i in ids)


# --- 8: secrets ---------------------------------------------------------------------------


def test_no_secret_is_in_any_log_output_or_ray_record(stage: Stage) -> None:
    url = stage.cluster.dashboard_url
    listed = {}
    for kind in ("jobs", "actors"):  # what `ray list ... --detail` shows anyone
        done = stage.ray("list", kind, "--detail", "--format=json", "--address", url)
        assert done.returncode == 0, done.stderr
        listed[kind] = json.loads(done.stdout)
    submitted = [job for job in listed["jobs"] if job.get("type") == "SUBMISSION"]
    assert submitted and all(not job.get("runtime_env") for job in submitted)
    for job in submitted:
        assert stage.ray("job", "logs", "--address", url, job["submission_id"]).returncode == 0
    names = {actor["name"] for actor in listed["actors"] if actor["state"] == "ALIVE"}
    assert {"jobline-app", "jobline-ledger", "jobline-sweeper"} <= names
    done = stage.run_guide(STOP)
    stage.app_running = False
    assert done.returncode == 0
    texts = {f"output {i}": text for i, text in enumerate(stage.outputs)}
    skip = {stage.cluster.token_path, stage.root / "fakes.log"}
    for path in stage.root.rglob("*"):
        if path.is_file() and path not in skip and "tsdb" not in path.parts:
            texts[str(path)] = path.read_text(errors="replace")
    assert any("session_" in name and name.endswith(".log") for name in texts)  # Ray's logs
    assert any(name.endswith("jobline.jsonl") for name in texts)  # jobline's own
    leaks = [
        f"{name} holds {variable}"
        for name, text in texts.items()
        for variable, value in SECRETS.items()
        if value in text
    ]
    assert leaks == []
