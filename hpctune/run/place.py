"""Put a rendered run folder into place: all old or all new, never through a symlink.

``target(path)`` decides whether a folder may be written there (one-line ConfigError naming
``-o/--output`` otherwise):

- the path itself must not be a symbolic link (a link in the run folder's place would make
  hpctune write, and ``chmod +x``, wherever it points); its parent folders are resolved
  (``/home`` -> ``/gpfs/home`` is normal on clusters);
- never inside hpctune's installed package or its shipped data (templates, profiles, recipes);
- an existing path must be a folder; a non-empty folder must be an hpctune run folder
  (``manifest.json``) that holds no run: no ``run.json`` (``hpctune submit`` registered it),
  nothing in ``logs/`` (it ran, e.g. ``sbatch RUN/job.sbatch`` by hand), no output folder
  with files in it (checkpoints). A never-submitted run folder is replaced only with ``force``.

``write(path, files, force)`` writes the files into a fresh temporary folder beside the target
(same filesystem), then renames it into place: with ``renameat2(RENAME_EXCHANGE)`` when the
target exists (one atomic swap), else a plain ``rename``. A render killed at any moment leaves
the target as it was (old) or as it is meant to be (new), never a mix that disagrees with its
manifest; concurrent renders into one folder each land whole, the last one wins. Temporary
folders are named ``.NAME.hpctune-<host>-<pid>-<random>`` and removed (also those that a
killed render on this host left behind).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from hpctune.errors import ConfigError

WHERE = "-o/--output"
_TMP = re.compile(r"\.(?P<name>.+)\.hpctune-(?P<host>[^-]+(?:-[^-]+)*)-(?P<pid>\d+)-[0-9a-f]{8}")


def _fail(message: str) -> ConfigError:
    return ConfigError(WHERE, "", message)


def _protected() -> list[Path]:
    import hpctune
    from hpctune import resources
    out = [Path(hpctune.__file__).resolve().parent]
    for fn in (resources.templates_dir, resources.clusters_dir, resources.recipes_dir):
        try:
            out.append(Path(fn()).resolve())
        except Exception:  # noqa: BLE001 - a missing data folder protects nothing
            pass
    return out


def has_run(folder: Path) -> str | None:
    """Why ``folder`` (a run folder) holds a run that must not be replaced, or None."""
    from hpctune.run import folder as layout

    if os.path.lexists(folder / layout.RUN_FILE):
        return f"it holds a submitted run ({layout.RUN_FILE})"
    try:
        if any(os.scandir(folder / layout.LOGS)):
            return f"it holds a run that started ({layout.LOGS}/ is not empty)"
    except OSError:
        pass
    out = layout.RunFolder(folder).manifest().output_dir
    try:
        if out and any(os.scandir(out)):
            return f"its output folder {out} is not empty (checkpoints?)"
    except OSError:
        pass
    return None


def target(path: str | Path, *, force: bool = False) -> Path:
    """The absolute run folder path to write, after the checks above."""
    from hpctune.run import folder as layout

    raw = Path(os.path.expanduser(str(path)))
    if str(raw) in ("", ".") and not raw.name:
        raise _fail("no run folder given")
    absolute = Path(os.path.abspath(raw))
    if absolute.name in ("", ".", ".."):
        raise _fail(f"{absolute} is not a folder name hpctune can write")
    try:
        parent = absolute.parent.resolve(strict=False)
        final = parent / absolute.name
        if final.is_symlink():
            raise _fail(f"{final} is a symbolic link; hpctune never writes through one: give the real folder")
        for protected in _protected():
            if final == protected or protected in final.parents:
                raise _fail(f"{final} is inside hpctune's own installed files ({protected}); choose a folder of yours")
        if not os.path.lexists(final):
            return final
        if not final.is_dir():
            raise _fail(f"{final} exists and is not a folder; choose a folder")
        if not any(os.scandir(final)):
            return final
        if not (final / layout.MANIFEST).is_file() or (final / layout.MANIFEST).is_symlink():
            raise _fail(f"{final} exists, is not empty and is not an hpctune run folder; choose another")
        why = has_run(final)
        if why:
            raise _fail(f"{final} is a run folder and {why}; it is never replaced: render into a new folder")
        if not force:
            raise _fail(f"{final} is an hpctune run folder (never submitted); replace it with --force, "
                        "or choose another folder")
        return final
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop in the parents
        raise _fail(f"cannot use {absolute}: {getattr(e, 'strerror', None) or e}") from None


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _write_file(path: Path, text: str, mode: int) -> None:
    # O_EXCL | O_NOFOLLOW: a fresh file in a fresh folder, never through a link.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _sweep_stale(final: Path) -> None:
    """Temporary folders of killed renders on this host (their process is gone)."""
    host = socket.gethostname()
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return
    for entry in entries:
        m = _TMP.fullmatch(entry.name)
        if not m or m["name"] != final.name or m["host"] != host or entry.is_symlink():
            continue
        pid = int(m["pid"])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still rendering
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def write(final: Path, files: dict[str, str], *, dirs: tuple[str, ...] = (), executable=(), force: bool = False) -> Path:
    """Write ``files`` ({relative name: text}) as the folder ``final`` (from ``target``)."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.hpctune-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp, 0o755)
        for d in dirs:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            _write_file(tmp / name, text, 0o755 if name in executable else 0o644)
        _sweep_stale(final)
        # Re-check just before the swap: a run may have started since target() looked.
        target(final, force=True)
        if os.path.lexists(final):
            if not _exchange(tmp, final):
                old = tmp.with_name(tmp.name + "-old")
                os.rename(final, old)
                os.rename(tmp, final)
                tmp = old
        else:
            try:
                os.rename(tmp, final)  # replaces nothing, or an empty folder made meanwhile
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Another render put a folder there meanwhile: replace it only as target() allows.
                target(final, force=force)
                if not _exchange(tmp, final):
                    raise
        return final
    except ConfigError:
        raise
    except OSError as e:
        where = e.filename or final.parent
        raise _fail(f"cannot write the run folder {final}: {where}: {e.strerror or e.__class__.__name__}") from None
    finally:
        if tmp.exists() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
