"""Memory stays bounded when clients stop reading: 100 stalled readers, a real server process."""

from __future__ import annotations

from pathlib import Path

import httpx

from ..conftest import API_KEY
from ..procs import ServerProcess
from ..rawws import RawWS, vm_rss_kib


async def test_stalled_readers_are_cut_off_and_rss_stays_bounded(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path, store_url="memory://", outbox_max_bytes="65536", history_size="0"
    )
    await server.start()
    readers: list[RawWS] = []
    try:
        assert server.proc is not None
        for _ in range(100):
            ws = await RawWS.connect("127.0.0.1", server.port, rcvbuf=4096)
            ws.send_text('{"type":"subscribe","payload":{"channel":"firehose"},"id":"s"}')
            readers.append(ws)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=10) as api:
            baseline = vm_rss_kib(server.proc.pid) * 1024
            blob = "x" * 8000
            # 1000 x 8 kB = 8 MB per reader: 800 MB if the server buffered everything.
            for i in range(1000):
                r = await api.post("/api/publish", json={"channel": "firehose", "data": [i, blob]})
                assert r.status_code == 200
            grown = vm_rss_kib(server.proc.pid) * 1024 - baseline
            status = (await api.get("/metrics")).text
        assert grown < 120 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
        assert "wshub_overflows_total 100.0" in status
    finally:
        for ws in readers:
            ws.close()
        await server.stop()
