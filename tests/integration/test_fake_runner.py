"""The runner: one fake per vendor of a jobline config, and `jobline fake-vendors`."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from runtime.config import load_config, parse_config
from vendors_fake import FaultProfile, preset
from vendors_fake.runner import (
    dev_webhook_secret,
    main,
    read_config,
    start_fake_vendors,
    vendor_credentials,
)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def two_vendor_config(fal_port: int, replicate_port: int) -> dict[str, object]:
    return {
        "vendors": {
            "fal": {
                "api": "fal",
                "base_url": f"http://127.0.0.1:{fal_port}",
                "api_key_env": "T_KEY",
                "concurrency": 3,
            },
            "rep": {
                "api": "replicate",
                "base_url": f"http://127.0.0.1:{replicate_port}",
                "api_key_env": "T_REP_KEY",
                "webhook_secret_env": "T_SECRET",
                "concurrency": 2,
            },
        },
        "models": {"m": {"price": 1, "route": [{"vendor": "fal", "model": "fal-ai/x"}]}},
    }


def test_credentials_come_from_the_environment_or_dev_defaults() -> None:
    config = parse_config(two_vendor_config(1, 2))
    fal, rep = config.vendors["fal"], config.vendors["rep"]
    assert vendor_credentials(fal, {}) == ("dev-key-fal", None)  # fal publishes its keys
    assert vendor_credentials(rep, {}) == ("dev-key-rep", dev_webhook_secret("rep"))
    assert dev_webhook_secret("fal").startswith("whsec_")
    assert dev_webhook_secret("fal") != dev_webhook_secret("rep")
    env = {"T_KEY": "k", "T_REP_KEY": "r", "T_SECRET": "whsec_c2VjcmV0"}
    assert vendor_credentials(fal, env) == ("k", None)
    assert vendor_credentials(rep, env) == ("r", "whsec_c2VjcmV0")


def test_the_runner_reads_the_config_file_itself(tmp_path: Path) -> None:
    """The fakes import nothing of jobline: the runner reads the vendors of a jobline.toml
    with tomllib, and says which key is wrong."""
    config = read_config(ROOT / "jobline.toml")
    assert {name: v.api for name, v in config.vendors.items()} == {
        "fal": "fal",
        "replicate": "replicate",
    }
    assert config.vendors["replicate"].webhook_secret_env == "REPLICATE_WEBHOOK_SECRET"
    assert config.vendors["fal"].webhook_secret_env is None
    bad = tmp_path / "bad.toml"
    fal = "[vendors.x]\napi = 'fal'\nbase_url = 'http://h'\napi_key_env = 'K'"
    for text, says in (
        ("[vendors.x]\napi = 'other'", "vendors.x.api"),
        (fal, "concurrency"),
        ("[gateway]\nport = 1", "vendors"),
        (f"{fal}\nconcurrency = true", r"vendors.x.concurrency: must be an integer >= 1, got True"),
        (f"{fal}\nconcurrency = '8'", r"vendors.x.concurrency: must be an integer >= 1, got '8'"),
        (f"{fal}\nconcurrency = 8\nwebhook_secret_env = 1", r"webhook_secret_env: must be a str"),
        ("not toml [", "not valid TOML"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=says):
            read_config(bad)


async def test_one_fake_per_vendor_on_the_configured_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = free_port(), free_port()
    config = parse_config(two_vendor_config(*ports))
    monkeypatch.delenv("T_KEY", raising=False)
    monkeypatch.setenv("T_REP_KEY", "rep-secret-key")
    fakes = await start_fake_vendors(config, "calm", seed=4)
    async with fakes, aiohttp.ClientSession() as http:
        assert fakes.urls == {
            "fal": f"http://127.0.0.1:{ports[0]}",
            "rep": f"http://127.0.0.1:{ports[1]}",
        }
        assert fakes["fal"].shape_name == "fal" and fakes["rep"].shape_name == "replicate"
        assert fakes["fal"].profile.concurrency_limit == 3  # from the vendor config
        assert fakes["rep"].profile.concurrency_limit == 2
        assert fakes["fal"].profile.run_time == preset("calm").run_time
        assert (fakes["rep"].api_key, fakes["fal"].api_key) == ("rep-secret-key", "dev-key-fal")
        assert fakes["rep"].webhook_secret == dev_webhook_secret("rep")
        async with http.post(
            f"{fakes.urls['rep']}/v1/models/a/b/predictions",
            json={"input": {}},
            headers={"Authorization": "Bearer rep-secret-key"},
        ) as r:
            assert r.status == 201
        assert fakes["rep"].seed == 4


async def test_free_ports_and_a_profile_with_its_own_limit() -> None:
    config = load_config(ROOT / "jobline.toml")
    profile = FaultProfile(concurrency_limit=50)
    async with await start_fake_vendors(config, profile, ports="free") as fakes:
        assert set(fakes.urls) == set(config.vendors)
        for name, fake in fakes.vendors.items():
            assert fake.profile.concurrency_limit == 50
            assert fake.shape_name == config.vendors[name].api
            assert fake.url != config.vendors[name].base_url


def test_main_refuses_a_missing_config() -> None:
    assert main(["--config", "/nonexistent/jobline.toml"]) == 2
    assert main(["--config", str(ROOT / "jobline.toml"), "--profile", "nope"]) == 2


# Seconds for the command's start and stop: generous, as `make test` runs it beside the
# heaviest files; the test is about stopping on Ctrl-C with exit 0, not about how fast.
COMMAND_WAIT = 90


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal would deliver it, whatever the test
    process inherited or set (an ignored or blocked SIGINT is inherited across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _process_state(pid: int) -> str:
    """The kernel's view of a process that did not stop: its state and signal masks."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "gone"
    return "; ".join(line for line in status if line.startswith(("State", "Sig", "Shd")))


def test_the_command_prints_urls_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    stderr = (tmp_path / "stderr").open("w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vendors_fake",
            "--config",
            str(ROOT / "jobline.toml"),
            "--profile",
            "flaky",
            "--seed",
            "9",
            "--free-ports",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    urls = {}
    try:
        while len(urls) < 2:
            try:
                line = lines.get(timeout=COMMAND_WAIT)
            except queue.Empty:
                raise AssertionError(f"no URLs printed; stderr: {stderr.read()}") from None
            parts = line.split()
            if len(parts) == 3 and parts[2].startswith("http://"):
                urls[parts[0]] = parts[2]
        assert set(urls) == {"fal", "replicate"}
        with urllib.request.urlopen(f"{urls['fal']}/_control/stats") as response:
            assert json.load(response)["seed"] == 9
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=COMMAND_WAIT)
        except subprocess.TimeoutExpired:
            state = _process_state(process.pid)
            process.kill()
            process.wait()
            stderr.seek(0)
            raise AssertionError(
                f"no exit {COMMAND_WAIT} s after Ctrl-C ({state}); stderr: {stderr.read()}"
            ) from None
    assert code == 0
