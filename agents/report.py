"""The daily report, on a schedule in the worker (REPORT_DAILY_AT, UTC; off by default): once a
day the previous day's report is written to REPORTS_DIR by a ``faust -A app report`` child
process at low priority — reading every topic is heavy work that must never hold up the books'
event loop — and the web view serves it at /reports/DATE."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from app.worker import app, settings

log = logging.getLogger(__name__)

_running: list[asyncio.subprocess.Process] = []


@app.timer(interval=10.0)
async def _daily_report() -> None:
    at = settings.report_daily_at
    if at is None or _running:
        return  # before the import below: with reports off it never runs (its first import held the loop 11 ms here)
    from app.report import yesterday

    now = time.gmtime()
    if (now.tm_hour, now.tm_min) < at:
        return
    day = yesterday()
    if (settings.reports_dir / day / "report.html").exists():
        return
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", "10", sys.executable, "-m", "faust", "-A", "app", "report", day,
        "--out", str(settings.reports_dir), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    _running.append(proc)
    try:
        _, err = await proc.communicate()
    finally:
        _running.remove(proc)
    if proc.returncode != 0:  # tried again at the next tick
        log.error("daily report for %s failed (exit %s): %s", day, proc.returncode, err.decode()[-500:])
        return
    log.info("daily report for %s written to %s in %.1fs", day, settings.reports_dir / day,
             time.monotonic() - began)
