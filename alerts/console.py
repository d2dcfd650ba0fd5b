"""The console sink: alerts as log lines or printed lines; the demo's sink, needs no service.

It is also the sink to keep when paging is not wanted yet (shadow rollouts, local runs).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

from alerts.base import Alert, format_values

__all__ = ["ConsoleSink"]

log = logging.getLogger(__name__)

Output = Literal["log", "stdout", "stderr"]


class ConsoleSink:
    """Write each alert as one line to the log, stdout or stderr.

    Parameters
    ----------
    output
        ``log`` logs at WARNING (firing) or INFO (resolved); ``stdout`` / ``stderr`` print.
    name
        The sink's name in metrics and logs.
    min_severity
        Alerts below this severity are not shown.
    """

    def __init__(
        self, output: Output = "log", *, name: str = "console", min_severity: str = "info"
    ) -> None:
        if output not in ("log", "stdout", "stderr"):
            raise ValueError(f"output must be log, stdout or stderr, not {output!r}.")
        self.output = output
        self.name = name
        self.min_severity = min_severity

    def __repr__(self) -> str:
        return f"ConsoleSink(name={self.name!r}, output={self.output!r})"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    @staticmethod
    def line(alert: Alert, status: str) -> str:
        """The one line shown for ``alert``.

        >>> from datetime import datetime
        >>> a = Alert("fraud", "FeatureDrift", "page", "degraded", ("amount",), "amount drifted",
        ...           "", "https://runbooks/x", datetime(2024, 1, 1), values={"amount": 0.4})
        >>> ConsoleSink.line(a, "firing")
        'FIRING fraud/FeatureDrift severity=page state=degraded signal=amount value=amount=0.4: amount drifted runbook=https://runbooks/x'
        """  # noqa: E501
        text = (
            f"{status.upper()} {alert.model}/{alert.alertname} severity={alert.severity} "
            f"state={alert.state} signal={alert.signal} value={format_values(alert)}: "
            f"{alert.summary}"
        )
        return f"{text} runbook={alert.runbook_url}" if alert.runbook_url else text

    async def send(self, alert: Alert) -> None:
        self._emit(alert, "resolved" if alert.resolved else "firing")

    async def acknowledge(self, alert: Alert) -> None:
        self._emit(alert, "acknowledged")

    def _emit(self, alert: Alert, status: str) -> None:
        if self.output == "log":
            level = logging.WARNING if status == "firing" else logging.INFO
            log.log(level, "alert %s", self.line(alert, status))
            return
        stream: TextIO = sys.stdout if self.output == "stdout" else sys.stderr
        print(self.line(alert, status), file=stream, flush=True)
