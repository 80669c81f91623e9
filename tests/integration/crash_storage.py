"""A file-system storage that pauses in the middle of the writes a crash test aims at.

Only names under `checkpoints/` and `artifacts/` are paced; the first chunk reaches the
file, the name is appended to CRASH_SAVES_LOG (the test waits for it), then the write
sleeps CRASH_PACE_SECONDS before the rest. Without CRASH_PACE_SECONDS it is Django's
FileSystemStorage unchanged.
"""

import os
import time
from pathlib import Path

from django.core.files import File
from django.core.files.storage import FileSystemStorage

PACED_PREFIXES = ("checkpoints/", "artifacts/")
CHUNK = 16 * 1024


class _PacedFile(File):
    def __init__(self, file, name: str, log: Path, pause: float):
        super().__init__(file, name=getattr(file, "name", name))
        self.storage_name, self.log, self.pause = name, log, pause

    def chunks(self, chunk_size=None):
        for index, chunk in enumerate(super().chunks(CHUNK)):
            yield chunk
            if index == 0:
                with self.log.open("a") as log:
                    log.write(f"{self.storage_name}\n")
                time.sleep(self.pause)


class PacedStorage(FileSystemStorage):
    def _save(self, name, content):
        pause = float(os.environ.get("CRASH_PACE_SECONDS") or 0)
        if pause and name.startswith(PACED_PREFIXES):
            content = _PacedFile(content, name, Path(os.environ["CRASH_SAVES_LOG"]), pause)
        return super()._save(name, content)
