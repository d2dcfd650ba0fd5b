"""Topic creation: the admin call that creates the topics the daemon and the tools need."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from monitor.config.settings import KafkaSettings

__all__ = ["ensure_topics"]

log = logging.getLogger(__name__)


async def ensure_topics(
    settings: KafkaSettings, topics: dict[str, dict[str, Any]], timeout_s: float
) -> None:
    """Create missing topics: ``{name: {"partitions": N, "config": {...}}}``."""
    admin = AIOKafkaAdminClient(**settings.client_options())
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        missing = [
            NewTopic(
                name,
                num_partitions=spec.get("partitions", 1),
                replication_factor=spec.get("replication_factor", 1),
                topic_configs=spec.get("config", {}),
            )
            for name, spec in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics(missing), timeout_s)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout_s)
