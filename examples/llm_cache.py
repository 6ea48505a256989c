"""A de-quantized copy of a GGUF chat model, made once so later loads skip the de-quantization.

transformers reads a GGUF file by de-quantizing every tensor to float32 in Python (about 40 s for
SmolLM2-135M on two CPU cores) and builds its tokenizer from the GGUF vocabulary (about 15 s more).
:func:`load_gguf_chat_model` does that once, writes the float32 weights as ``model.safetensors``
with the config and tokenizer files beside them, and loads that folder directly on every later
run (about 1.5 s).

Where: ``$RAG_RERANK_LLM_CACHE`` if set, else ``$RAG_RERANK_CACHE/llm``, else
``$XDG_CACHE_HOME/rag-rerank/llm`` (by default ``~/.cache/rag-rerank/llm``): the same root as the
ONNX exports. One folder per GGUF content, named ``<gguf stem>-<first 16 hex of its sha256>``.

Keyed by content: the folder name holds the GGUF file's SHA-256, so a changed GGUF gets a new
folder (the old one is removed once the new one is complete) and the same file found at another
path re-uses the copy. Hashing 100 MB takes a fraction of a second, and even that is paid once:
the digest is remembered in ``gguf-hashes.json`` beside the copies together with the file's size,
modification time (ns), inode and device, and re-computed only when one of those changes. A file
rewritten in place with the same size and a forged modification time would not be noticed; any
ordinary update (a package upgrade, a copy, an edit) changes the modification time or the inode.

Safe against interruption and concurrency:

* A copy is built in a temporary folder next to its final place, its files flushed to disk, a
  manifest (``rag-rerank-llm-cache.json``: recipe, GGUF digest, every file's size) written last,
  and the folder renamed into place in one step. A run killed at any moment leaves either no copy
  (the next run builds it and removes the leftover temporary folder) or a complete one.
* A copy whose manifest is missing or does not match, or a file whose size differs from the
  manifest (a truncated file), is rebuilt; so is one that fails to load for any other reason.
* Builders take an OS file lock (``filelock``) per copy: concurrent first runs build it once,
  the others wait and then load it.

Library code: progress is logged on this module's logger (``rerank_examples.llm_cache``) at
INFO; ``rag-rerank ask`` prints those lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "MANIFEST",
    "DequantizedCopy",
    "default_llm_cache_dir",
    "ensure_dequantized",
    "gguf_sha256",
    "load_gguf_chat_model",
]

#: Environment variable naming the cache folder itself.
CACHE_ENV = "RAG_RERANK_LLM_CACHE"
#: The file written last into a copy; a copy without a matching one is incomplete.
MANIFEST = "rag-rerank-llm-cache.json"
#: Bump when the conversion or the layout changes, so copies made by an older recipe are rebuilt.
_RECIPE = 1
_HASHES = "gguf-hashes.json"
_TMP_MARK = ".tmp-"
_TRASH_MARK = ".trash-"
# Guards the digest memo against two threads of one process; other processes replace it whole.
_MEMO_LOCK = threading.Lock()


def default_llm_cache_dir() -> Path:
    """Where de-quantized copies live (see the module docstring for the order of choices)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    root = os.environ.get("RAG_RERANK_CACHE")
    if root:
        return Path(root).expanduser() / "llm"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rag-rerank" / "llm"


# --------------------------------------------------------------------------- hashing


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_MARK}{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def gguf_sha256(
    path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """The SHA-256 of ``path``, streamed, remembered in ``cache_dir`` until the file changes.

    The memo (``gguf-hashes.json``) maps the file's resolved path to its size, modification
    time, inode, device and digest; a stat that matches returns the remembered digest without
    reading the file.

    Raises:
        OSError: ``path`` cannot be read.
    """
    file = Path(path).resolve()
    key = _stat_key(file.stat())
    folder = Path(cache_dir) if cache_dir is not None else default_llm_cache_dir()
    memo_path = folder / _HASHES
    with _MEMO_LOCK:
        try:
            memo = json.loads(memo_path.read_text(encoding="utf-8"))
            if not isinstance(memo, dict):
                memo = {}
        except (OSError, ValueError):
            memo = {}
        entry = memo.get(str(file))
        if isinstance(entry, dict) and entry.get("stat") == key and entry.get("sha256"):
            return str(entry["sha256"])
        logger.debug("hashing %s", file)
        digest = _sha256_file(file)
        memo[str(file)] = {"stat": key, "sha256": digest}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True))
        except OSError as exc:  # a read-only cache only costs a re-hash next time
            logger.debug("could not remember the digest of %s: %s", file, exc)
        return digest


# --------------------------------------------------------------------------- the copy


@dataclass(frozen=True)
class DequantizedCopy:
    """A complete de-quantized copy of one GGUF file.

    Attributes:
        folder: Loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer``.
        sha256: The GGUF file's SHA-256.
        built: Whether this call built it (``False``: it was already there).
        seconds: Time this call spent hashing, waiting and building.
    """

    folder: Path
    sha256: str
    built: bool
    seconds: float


def _manifest_ok(folder: Path, sha256: str) -> bool:
    """Whether ``folder`` is a complete copy of the GGUF with this digest (sizes checked)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("recipe") != _RECIPE or manifest.get("gguf_sha256") != sha256:
            return False
        files = manifest["files"]
        if not files or "model.safetensors" not in files or "config.json" not in files:
            return False
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        with file.open("rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dequantize_into(gguf: Path, out: Path, sha256: str) -> None:
    """Load ``gguf`` through transformers (the de-quantization) and write it as float32 files."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise ImportError(
            f"loading a GGUF model needs the gguf package ({exc}): pip install 'rag-rerank[rag]'"
        ) from exc
    config = model.config.to_dict()
    # The copy is plain float32: nothing about it is quantized any more.
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if model.generation_config is not None:
        model.generation_config.to_json_file(str(out / "generation_config.json"))
    # save_model writes tied weights (embeddings = output layer) once.
    save_model(model, str(out / "model.safetensors"))
    tokenizer.save_pretrained(str(out))
    del model
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()}
    manifest = {
        "recipe": _RECIPE,
        "gguf_sha256": sha256,
        "gguf_path": str(gguf),
        "files": files,
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _fsync_tree(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with (out / MANIFEST).open("rb") as f:
        os.fsync(f.fileno())


def _discard(folder: Path) -> None:
    """Move ``folder`` out of the way in one step, then delete it (a crash leaves only trash)."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{_TRASH_MARK}{folder.name}-{os.getpid()}-{time.time_ns()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clear_leftovers(cache_dir: Path, name: str) -> None:
    """Remove what interrupted runs left, with ``name``'s lock held.

    ``name``'s temporary folders (no live build uses them while the lock is held) and any trash
    (folders moved aside to be deleted, never read again).
    """
    for stale in cache_dir.iterdir():
        if stale.name.startswith((f"{_TMP_MARK}{name}-", _TRASH_MARK)) and stale.is_dir():
            logger.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _remove_superseded(cache_dir: Path, gguf: Path, keep: Path) -> None:
    """Remove copies of an earlier content of the same GGUF path (the file has changed)."""
    for other in cache_dir.iterdir():
        if other == keep or not other.name.startswith(f"{gguf.stem}-") or not other.is_dir():
            continue
        try:
            made = json.loads((other / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not recognisably ours
        if made.get("gguf_path") == str(gguf):
            logger.info("removing %s: %s has changed since it was made", other, gguf.name)
            with contextlib.suppress(OSError):
                _discard(other)


@contextlib.contextmanager
def _build_lock(cache_dir: Path, name: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    try:
        from filelock import FileLock, Timeout
    except ImportError as exc:
        raise ImportError(
            "caching the de-quantized LLM needs filelock: pip install 'rag-rerank[rag]'"
        ) from exc
    lock = FileLock(str(cache_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait(str(lock.lock_file))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def ensure_dequantized(
    gguf_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    rebuild: bool = False,
) -> DequantizedCopy:
    """Return the de-quantized copy of ``gguf_path``, building it first if needed.

    Args:
        gguf_path: The ``.gguf`` file.
        cache_dir: Where copies live; default :func:`default_llm_cache_dir`.
        rebuild: Build it again even if a complete copy is there (used when a copy that looked
            complete failed to load).

    Raises:
        OSError: the GGUF cannot be read or the cache folder cannot be written.
        ImportError: ``gguf`` or ``filelock`` is missing.
    """
    start = time.perf_counter()
    gguf = Path(gguf_path).resolve()
    root = Path(cache_dir) if cache_dir is not None else default_llm_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    sha256 = gguf_sha256(gguf, root)
    name = f"{gguf.stem}-{sha256[:16]}"
    folder = root / name
    if not rebuild and _manifest_ok(folder, sha256):
        return DequantizedCopy(folder, sha256, False, time.perf_counter() - start)
    seen = _stamp(folder)

    def waiting(lock_file: str) -> None:
        logger.info(
            "waiting for another process that is de-quantizing %s (lock %s)", gguf.name, lock_file
        )

    with _build_lock(root, name, waiting):
        # Another process may have built it (or, for a forced rebuild, rebuilt it) meanwhile.
        if _manifest_ok(folder, sha256) and (not rebuild or _stamp(folder) != seen):
            return DequantizedCopy(folder, sha256, False, time.perf_counter() - start)
        _clear_leftovers(root, name)
        if folder.exists() and not rebuild:  # a forced rebuild has said why already
            logger.warning(
                "the de-quantized copy at %s is incomplete or damaged; rebuilding it", folder
            )
        logger.info(
            "loading %s: first run, de-quantizing it (tens of seconds for SmolLM2); "
            "the float32 copy is kept in %s so later runs skip this...",
            gguf.name,
            root,
        )
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{_TMP_MARK}{name}-"))
        try:
            _dequantize_into(gguf, tmp, sha256)
            _discard(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(root)
        _remove_superseded(root, gguf, folder)
    seconds = time.perf_counter() - start
    logger.info("de-quantized %s in %.1f s", gguf.name, seconds)
    return DequantizedCopy(folder, sha256, True, seconds)


def _stamp(folder: Path) -> tuple[int, int] | None:
    """Identity of a copy's manifest: changes when the copy is replaced."""
    try:
        st = (folder / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _load_folder(folder: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, tokenizer


def load_gguf_chat_model(
    gguf_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any, DequantizedCopy]:
    """Load a GGUF chat model as float32 transformers objects, through the de-quantized copy.

    The first call for a GGUF file de-quantizes it and writes the copy; later calls (in any
    process) load the copy. A copy that fails to load is rebuilt once.

    Args:
        gguf_path: The ``.gguf`` file.
        cache_dir: Where copies live; default :func:`default_llm_cache_dir`.

    Returns:
        ``(model, tokenizer, copy)``: the model in eval mode, its tokenizer, and which copy was
        used and whether this call built it.

    Raises:
        OSError: the GGUF cannot be read or the cache folder cannot be written.
        ImportError: ``gguf`` or ``filelock`` is missing.
    """
    gguf = Path(gguf_path)
    copy = ensure_dequantized(gguf, cache_dir)
    if not copy.built:
        logger.info("loading %s from its de-quantized copy in %s...", gguf.name, copy.folder)
    try:
        model, tokenizer = _load_folder(copy.folder)
    except ImportError:
        raise
    except Exception as exc:  # a damaged copy, whatever the loader raises about it
        logger.warning(
            "the de-quantized copy at %s does not load (%s); rebuilding it", copy.folder, exc
        )
        copy = ensure_dequantized(gguf, cache_dir, rebuild=True)
        model, tokenizer = _load_folder(copy.folder)
    return model, tokenizer, copy
