"""The reference reservation service: a faithful local target for the campaign.

Queue tokens (API-1/2), seat reservations under per-seat Redis locks (API-3), a payment saga driven by a
transactional outbox over a Redis Streams bus (API-4), concerts (API-5) and atomic point charges (API-6).
Start it with ``uv run python -m infra.sut --port P`` or ``soundcheck sut``; every limit is a setting
(see :mod:`infra.sut.settings`).
"""
