"""sepcli.hub.cache: the cross-process lock survives a holder that deletes it."""

from __future__ import annotations

import threading
import time

from sepcli.hub.cache import file_lock


def test_a_waiter_relocks_after_the_holder_deleted_the_lock_and_its_folder(tmp_path):
    folder = tmp_path / "models" / "m" / "key"
    lock = folder / ".lock"
    log: list[str] = []
    waiting = threading.Event()

    def waiter(name: str) -> None:
        waiting.set()
        with file_lock(lock):
            log.append(f"{name} in")
            assert lock.is_file()  # locked the recreated file, not the deleted one
            time.sleep(0.2)
            log.append(f"{name} out")

    with file_lock(lock):
        first = threading.Thread(target=waiter, args=("b",))
        first.start()
        waiting.wait()
        time.sleep(0.2)  # b now waits on the lock file that is about to go
        lock.unlink()
        folder.rmdir()
        folder.parent.rmdir()
    time.sleep(0.05)
    second = threading.Thread(target=waiter, args=("c",))
    second.start()
    first.join(10)
    second.join(10)
    # b and c never held the lock at the same time
    assert log in (["b in", "b out", "c in", "c out"], ["c in", "c out", "b in", "b out"])
