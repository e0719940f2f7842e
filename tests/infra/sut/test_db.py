"""The connection pool: a wait past its timeout is an error, and counted."""

from __future__ import annotations

import asyncio

import pytest

from infra.sut.db import Database
from infra.sut.settings import Settings


def test_pool_exhaustion_times_out_and_is_counted(tmp_path):
    from infra.sut import metrics
    from infra.sut.db import PoolTimeout

    async def run():
        db = Database(
            Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", db_pool_size=1, db_pool_timeout=0.2)
        )
        before = metrics.POOL_TIMEOUTS._value.get()
        try:
            async with db.connect():
                assert db.pool_stats()[1] == 1
                with pytest.raises(PoolTimeout):
                    async with db.connect():
                        pass
                waiting_after = db.waiting
        finally:
            await db.dispose()
        return metrics.POOL_TIMEOUTS._value.get() - before, waiting_after

    counted, waiting = asyncio.run(run())
    assert counted == 1 and waiting == 0
