"""One process per run directory: an exclusive flock on the run directory itself.

    lock = RunDirLock(run_dir)
    lock.acquire()      # UserInputError "--run_dir X is in use by process PID ..." if held
    ...                 # train; every write to run_dir happens while the lock is held
    lock.release()

The lock is `fcntl.flock` on the directory (opened read-only), so taking it creates no file:
a refused second process changes nothing on disk. A run dir that does not exist yet is
created first (only after every other check of the run passed; `release` removes it again if
the run stopped before writing anything into it). flock locks belong to the open file, so they
vanish with the process that held them: a run killed with SIGKILL never blocks its rerun. The
holder's PID is read from /proc/locks (Linux); elsewhere the message says "another process".

Multi-worker (TF_CONFIG): only the chief writes the run dir and takes the lock (loop.py); the
other workers may see the same folder on shared storage and must not contend for it. A file
system without flock support (some NFS mounts) gives a warning and the run goes on unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys

from keras_largebatch.errors import UserInputError


def holder_pid(fd: int) -> int | None:
    """The PID holding a flock on the file open as `fd`, from /proc/locks (None if unknown)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 25328 fe:00:260072 0 EOF" (waiters have a "->" field)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
            return int(fields[4]) if fields[4].isdigit() else None
    return None


class RunDirLock:
    """An exclusive, non-blocking flock on a run directory, held until `release`."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        """Take the lock (creating the folder if missing) or raise UserInputError."""
        path = os.path.normpath(self.run_dir)
        if not os.path.isdir(path):
            try:
                os.makedirs(path)
            except FileExistsError:
                pass  # another process made it first; the lock decides
            except OSError as e:
                raise UserInputError(f"cannot create --run_dir {self.run_dir} ({e.strerror}); "
                                     f"choose a folder you can write to") from None
            else:
                self._created = True
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(fd)
            os.close(fd)
            who = f"process {pid}" if pid else "another process"
            raise UserInputError(
                f"--run_dir {self.run_dir} is in use by {who} (a run on the same folder); wait "
                f"for it to end or stop it, or choose another --run_dir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
                os.close(fd)
                raise
            print(f"warning: cannot lock --run_dir {self.run_dir} ({e.strerror}); make sure no "
                  f"other run uses it", file=sys.stderr, flush=True)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; remove the folder if `acquire` made it and it is still empty."""
        if self._fd is not None:
            if self._created:
                try:
                    os.rmdir(self.run_dir)  # only succeeds while empty: the run wrote nothing
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None
