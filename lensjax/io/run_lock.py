"""One trainer per run directory: a lock that lives as long as the process holding it.

`claim(run_dir)` makes the directory if it is missing and takes an exclusive
`flock` on RUN_DIR/.lensjax.lock, writing who holds it (host, pid, start
time, command). The kernel drops the lock when the process ends, kill -9
included, so a lock left behind by a dead trainer is never in the way: its
file still names the dead holder, but nothing holds the lock. Where the file
system cannot `flock` (some network mounts), the lock file alone is the lock,
and a stale one is recognised by its host and pid: on this host, a holder
whose pid no longer runs; another host's holder cannot be checked from here,
so the sentence says how to remove its file.

Readers (the analyses) call `holder(run_dir)` to learn whether a live trainer
holds the directory, and then leave every file in it as it is.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import time

from lensjax.errors import InputError

LOCK_NAME = ".lensjax.lock"


@dataclasses.dataclass
class RunLock:
  """A held lock; `release()` (or the process' end) lets the next trainer in."""
  path: str
  _fd: int | None
  _owns_file: bool  # the fallback without flock: the file itself is the lock, removed on release

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      if self._owns_file:
        os.unlink(self.path)
      else:
        os.ftruncate(self._fd, 0)  # leaves no holder named in a file nobody holds
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None


def check_run_dir(run_dir: str, flag: str = "--workdir") -> None:
  """InputError when `run_dir` cannot be a run directory: a file, or a directory (or missing parent) not writable."""
  if os.path.exists(run_dir) and not os.path.isdir(run_dir):
    raise InputError(f"{flag} {run_dir} is a file, not a directory; pass a directory (it is created if missing).")
  existing = run_dir
  while not os.path.exists(existing):
    parent = os.path.dirname(os.path.abspath(existing))
    if parent == existing:
      break
    existing = parent
  if os.path.isdir(existing) and not _writable(existing):
    what = "it is" if existing == run_dir else f"its folder {existing} is"
    raise InputError(f"{flag} {run_dir} cannot be written ({what} read-only for this user); pass a directory "
                     "you can write, or change its permissions.")
  if not os.path.isdir(existing):
    raise InputError(f"{flag} {run_dir} lies under {existing}, which is a file, not a directory; pass another path.")


def claim(run_dir: str, flag: str = "--workdir") -> RunLock:
  """Makes `run_dir` and takes its lock; InputError naming the holder when another live process has it."""
  check_run_dir(run_dir, flag)
  try:
    os.makedirs(run_dir, exist_ok=True)
  except OSError as e:
    raise InputError(f"{flag} {run_dir} cannot be created ({e.strerror}); pass a directory you can write.") from None
  path = os.path.join(run_dir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise InputError(f"{flag} {run_dir} cannot be written ({e.strerror}); pass a directory you can write.") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder_text = _describe(_read(fd))
    os.close(fd)
    raise InputError(f"{run_dir} is in use by another lensjax train ({holder_text}); wait for it to finish or stop "
                     f"it, or pass another {flag}.") from None
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      os.close(fd)
      raise
    os.close(fd)
    return _claim_without_flock(run_dir, path, flag)
  _write_holder(fd)
  return RunLock(path, fd, _owns_file=False)


def holder(run_dir: str) -> dict | None:
  """Who holds `run_dir`'s lock now (host, pid, started, command), or None when no live process does."""
  path = os.path.join(run_dir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read(fd) or {}
    except OSError:
      info = _read(fd)
      return info if info and _alive(info) else None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _claim_without_flock(run_dir: str, path: str, flag: str) -> RunLock:
  for _ in range(2):  # a stale file is removed once, then the claim is tried again
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      with open(path) as f:
        info = _parse(f.read())
      if info and info.get("host") != socket.gethostname():
        raise InputError(f"{run_dir} is locked by a lensjax train on another host ({_describe(info)}), which this "
                         f"host cannot check; if it has ended, delete {path} and run again.") from None
      if info and _alive(info):
        raise InputError(f"{run_dir} is in use by another lensjax train ({_describe(info)}); wait for it to finish "
                         f"or stop it, or pass another {flag}.") from None
      os.unlink(path)  # a holder of this host that no longer runs
      continue
    _write_holder(fd)
    return RunLock(path, fd, _owns_file=True)
  raise InputError(f"{run_dir}: another process took its lock while this one removed a stale lock; run again.")


def _write_holder(fd: int) -> None:
  info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)


def _read(fd: int) -> dict | None:
  try:
    return _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
  except OSError:
    return None


def _parse(text: str) -> dict | None:
  try:
    info = json.loads(text)
  except ValueError:
    return None
  return info if isinstance(info, dict) else None


def _describe(info: dict | None) -> str:
  if not info:
    return "a process that has not yet written its name"
  return f"pid {info.get('pid')} on host {info.get('host')}, since {info.get('started')}"


def _alive(info: dict) -> bool:
  """Whether the holder still runs; one of another host counts as alive (it cannot be checked from here)."""
  if info.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(info.get("pid", -1)), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, OverflowError):
    return True
  return True


def _writable(directory: str) -> bool:
  """Whether files can be made in `directory` (tried, not inferred from modes: root ignores them, a read-only
  mount does not)."""
  probe = os.path.join(directory, f".lensjax-write-test-{os.getpid()}")
  try:
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  except OSError:
    return False
  os.close(fd)
  os.unlink(probe)
  return True
