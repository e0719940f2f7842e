"""``python -m infra.sut``: start the reference service (see :func:`infra.sut.server.main`)."""

from infra.sut.server import main

if __name__ == "__main__":
    main()
