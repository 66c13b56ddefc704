"""The labeling app's domain operations (FastAPI's full-stack template calls them ``crud``): plain
functions over a SQLAlchemy session that know nothing of HTTP.

They take validated input (the ``schemas`` models; ``parse`` builds one from raw values) and raise
``DomainError`` subclasses saying what is wrong in words for the person who asked. The web app
maps each subclass to one status code (``app.py``); the CLI prints the message and exits with 2.

    routes/*.py (HTTP) ─┐
    cli.py (terminal) ──┴─▶ services/{users,projects,auth}.py, importer.py, assign.py ─▶ models
"""

from rankloop.labeling.services.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Throttled, Unauthorized, parse

__all__ = ["Conflict", "DomainError", "Forbidden", "Invalid", "NotFound", "Throttled", "Unauthorized", "parse"]
