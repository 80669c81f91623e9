"""The orphan-spool sweep's notion of a dead process (marketplace.storage)."""

import os
import subprocess
import sys
import time

import pytest

from marketplace.storage import _alive


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_zombie_counts_as_dead_and_a_running_process_as_alive():
    # Given a child that has exited but is not reaped yet (a zombie, as a SIGKILLed web
    # worker is until init reaps it) and one that is still running
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{zombie.pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)

        # Then the zombie is dead to the sweep, the sleeper alive, our own process alive
        assert _alive(zombie.pid) is False
        assert _alive(running.pid) is True
        assert _alive(os.getpid()) is True
    finally:
        running.kill()
        running.wait()
        zombie.wait()
    assert _alive(zombie.pid) is False  # reaped: no such process
