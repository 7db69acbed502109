"""The daily report, on a schedule in the worker: at REPORT_DAILY_AT (UTC) the previous day's
report is written to REPORTS_DIR (``app.report``), once; the web view serves it at /reports/DATE."""

from __future__ import annotations

import logging
import time

from app.worker import app, settings

log = logging.getLogger(__name__)


@app.timer(interval=60.0)
async def _daily_report() -> None:
    from app.report import report, yesterday

    at = settings.report_daily_at
    if at is None:
        return
    now = time.gmtime()
    if (now.tm_hour, now.tm_min) < at:
        return
    day = yesterday()
    if (settings.reports_dir / day / "report.html").exists():
        return
    began = time.monotonic()
    try:
        folder = await report(settings, day, settings.reports_dir)
    except Exception:  # a report that fails is logged and tried again in a minute, never the worker's end
        log.exception("daily report for %s failed", day)
        return
    log.info("daily report for %s written to %s in %.1fs", day, folder, time.monotonic() - began)
