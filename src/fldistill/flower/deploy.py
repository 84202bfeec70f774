"""The app objects named in a deployed app's ``pyproject.toml`` (see :func:`fldistill.flower.apps.write_app`).

Both read the experiment from the Flower run config (``fldistill-config``, ``out``).
"""

from fldistill.flower.apps import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
