"""REST service and web dashboard (MISSION M4): ``create_app(db_url, models_dir)``.

Routers per area live in :mod:`fabsight.serve.routers`; they are thin layers over the
store (:mod:`fabsight.store`), the readers, the wafer classifier and the assist / monitor
libraries. Run it with ``fabsight serve``.
"""

from fabsight.serve.app import create_app, run

__all__ = ["create_app", "run"]
