"""Worker settings for the crash tests (tests/integration/test_crash_points.py).

The integration worker settings, with storage in a folder of the test's own
(CRASH_MEDIA_ROOT, so the test can list every file a run left) and, when CRASH_PACE_SECONDS
is set, a storage that announces each artifact or checkpoint write in CRASH_SAVES_LOG and
pauses half-way through it: the test kills the worker while the file is half written.
"""

import os
from pathlib import Path

from marketplace.settings.test_worker import *  # noqa: F403

MEDIA_ROOT = Path(os.environ["CRASH_MEDIA_ROOT"])
STORAGES = {
    **STORAGES,  # noqa: F405
    "default": {"BACKEND": "tests.integration.crash_storage.PacedStorage"},
}
