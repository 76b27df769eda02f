"""The app on the session's Ray: one per name, never a second empty ledger, one role's metrics.

No fake vendors: deploying, refusing and stopping talk to no vendor.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from actors.hosting import RayRuntime, read_record
from loadtests.testbed import ROOT_CONFIG, local_config
from runtime.config import JoblineConfig, load_config
from runtime.errors import AppAlreadyRunning, DeploymentError

pytestmark = pytest.mark.ray


def app_config(data: Path) -> JoblineConfig:
    nowhere = {"fal": "http://127.0.0.1:9", "replicate": "http://127.0.0.1:9"}
    namespace = f"jobline-{secrets.token_hex(4)}"
    return local_config(
        load_config(ROOT_CONFIG), data, nowhere, overrides={"ray": {"namespace": namespace}}
    )


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_one_app_per_name_and_never_a_second_empty_ledger(
    tmp_path: Path, ray_session: Any
) -> None:
    config = app_config(tmp_path / "a")
    runtime = await asyncio.to_thread(RayRuntime.start, config)
    try:
        with pytest.raises(AppAlreadyRunning):
            await asyncio.to_thread(RayRuntime.start, config)
        rows = {row.role: row for row in await asyncio.to_thread(runtime.status)}
        assert rows["ledger"].detail == str(config.storage.database) and rows["ledger"].ready
        assert {r for r in rows if r.startswith("gateway-")} == {"gateway-0", "gateway-1"}
        # one role's metrics, as a cluster's Prometheus scrapes them
        base = config.gateway.public_url
        status, text = await asyncio.to_thread(get, f"{base}/metrics?actor=ledger")
        assert status == 200 and 'jobline_actor_up{actor="ledger"} 1.0' in text
        assert 'actor="gateway-' not in text and 'actor="sweeper"' not in text
        status, text = await asyncio.to_thread(get, f"{base}/metrics")
        assert 'actor="sweeper"' in text and 'actor="ledger"' in text
        assert (await asyncio.to_thread(get, f"{base}/metrics?actor=nobody"))[0] == 404
    finally:
        lines = await asyncio.to_thread(runtime.stop)
    assert any("checkpointed" in line for line in lines)
    assert not config.storage.database.with_name("jobline.db-wal").exists()
    record = read_record(config.ray.namespace)
    assert record is not None and record["database"] == str(config.storage.database)
    assert record["stopped"] is not None

    # The file is gone (a volume not mounted, a wrong disk): the cluster remembers it.
    config.storage.database.unlink()
    with pytest.raises(DeploymentError) as info:
        await asyncio.to_thread(RayRuntime.start, config)
    (line,) = info.value.lines()
    assert line.startswith(f"ledger: the ledger {config.storage.database} does not exist, but app")
    assert "has run on this Ray cluster with it since" in line
    assert not config.storage.database.exists()

    # Another path for the same app: refused, naming both.
    moved = config.storage.model_copy(update={"database": tmp_path / "b" / "jobline.db"})
    elsewhere = config.model_copy(update={"storage": moved})
    with pytest.raises(DeploymentError) as info:
        await asyncio.to_thread(RayRuntime.start, elsewhere)
    assert str(config.storage.database) in str(info.value)
    assert str(moved.database) in str(info.value)


async def test_a_restarted_ledger_never_creates_a_new_file(
    tmp_path: Path, ray_session: Any
) -> None:
    config = app_config(tmp_path)
    runtime = await asyncio.to_thread(RayRuntime.start, config)
    try:
        config.storage.database.unlink()
        for suffix in ("-wal", "-shm"):
            config.storage.database.with_name(config.storage.database.name + suffix).unlink(
                missing_ok=True
            )
        await asyncio.to_thread(runtime.kill, "ledger")  # Ray restarts it

        async def ledger_row() -> Any:
            for _ in range(120):
                rows = {row.role: row for row in await asyncio.to_thread(runtime.status)}
                if rows["ledger"].restarts >= 1 and rows["ledger"].error:
                    return rows["ledger"]
                await asyncio.sleep(0.5)
            raise AssertionError("the restarted ledger never reported")

        row = await ledger_row()
        assert not row.ready and "does not exist" in row.error and "restarted" in row.error
        assert not config.storage.database.exists()
    finally:
        await asyncio.to_thread(runtime.stop)
