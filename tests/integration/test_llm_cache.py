"""The de-quantized copy of a GGUF chat model, on a real tiny GGUF written here with ``gguf``.

The reference is transformers' own GGUF loader on the same file: the copy must give the same
logits, bit for bit.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("filelock")

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rerank_examples.llm_cache import (
    MANIFEST,
    ensure_dequantized,
    gguf_sha256,
    load_gguf_chat_model,
)

CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = [{"role": "user", "content": "what is at stake"}]


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 base tokens of a byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama (hidden 64) with a byte-level BPE tokenizer and a chat template.

    Quantized like SmolLM2's file: Q8_0 and Q4_1 matrices, float32 norms, tied embeddings.
    """
    q8, q41, f32 = (
        gguf.GGMLQuantizationType.Q8_0,
        gguf.GGMLQuantizationType.Q4_1,
        gguf.GGMLQuantizationType.F32,
    )
    rng = np.random.default_rng(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = [*specials, *_byte_chars(), "Ġt", "Ġa"]
    vocab, hidden, ffn, heads, kv_heads, layers = len(tokens), 64, 128, 2, 1, 2
    head_dim = hidden // heads
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (vocab - len(specials)))
    w.add_token_merges(["Ġ t", "Ġ a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT)

    def tensor(name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType = q8) -> None:
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if qtype == f32:
            w.add_tensor(name, values)
        else:
            w.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", (vocab, hidden))
    tensor("output_norm.weight", (hidden,), f32)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), f32)
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), f32)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), q41)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), q41)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden))
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _last_logits(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        return model(**inputs).logits[0, -1]


def _from_gguf(path: Path) -> torch.Tensor:
    """The reference: transformers de-quantizing the GGUF itself."""
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return _last_logits(model.eval(), tokenizer)


def _copies(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A tiny GGUF (seed 0) and its reference logits; tests copy the file before changing it."""
    path = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return path, _from_gguf(path)


@pytest.fixture
def gguf_file(tmp_path: Path, tiny_gguf) -> Path:
    dest = tmp_path / "model" / "tiny.gguf"
    dest.parent.mkdir()
    dest.write_bytes(tiny_gguf[0].read_bytes())
    return dest


def test_first_load_writes_the_copy_and_the_next_reads_it_without_the_gguf(
    tmp_path: Path, gguf_file: Path, tiny_gguf
) -> None:
    cache = tmp_path / "cache"
    model, tokenizer, first = load_gguf_chat_model(gguf_file, cache)
    assert first.built
    assert torch.equal(_last_logits(model, tokenizer), tiny_gguf[1])
    assert _copies(cache) == [first.folder]  # the temporary folder was renamed into place
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    manifest = json.loads((first.folder / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == first.sha256 == gguf_sha256(gguf_file, cache)
    for name, size in manifest["files"].items():
        assert (first.folder / name).stat().st_size == size
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    weights = (first.folder / "model.safetensors").stat()

    # Zero the GGUF in place, keeping its size and modification time: de-quantizing it now
    # fails, so a load that works and gives the same logits read the copy, not the GGUF.
    st = gguf_file.stat()
    gguf_file.write_bytes(bytes(st.st_size))
    os.utime(gguf_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises on a non-GGUF
        _from_gguf(gguf_file)

    model, tokenizer, second = load_gguf_chat_model(gguf_file, cache)
    assert not second.built and second.folder == first.folder
    assert torch.equal(_last_logits(model, tokenizer), tiny_gguf[1])
    again = (first.folder / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (weights.st_ino, weights.st_mtime_ns)


def test_a_changed_gguf_gets_a_new_copy_and_the_old_one_goes(
    tmp_path: Path, gguf_file: Path, tiny_gguf
) -> None:
    cache = tmp_path / "cache"
    old = ensure_dequantized(gguf_file, cache)
    write_tiny_llama_gguf(gguf_file, seed=1)  # same path and size, other weights
    expected = _from_gguf(gguf_file)
    assert not torch.equal(expected, tiny_gguf[1])

    model, tokenizer, new = load_gguf_chat_model(gguf_file, cache)
    assert new.built and new.folder != old.folder and new.sha256 != old.sha256
    assert torch.equal(_last_logits(model, tokenizer), expected)
    assert _copies(cache) == [new.folder]  # the copy of the old content was removed


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)


def _scramble_weights_header(folder: Path) -> None:
    # Same size, so the manifest's sizes match: only loading it finds the damage.
    with (folder / "model.safetensors").open("r+b") as f:
        f.write(b"\xff" * 64)


def _drop_manifest(folder: Path) -> None:
    (folder / MANIFEST).unlink()


@pytest.mark.parametrize("damage", [_truncate_weights, _scramble_weights_header, _drop_manifest])
def test_a_damaged_copy_is_rebuilt(tmp_path: Path, gguf_file: Path, tiny_gguf, damage) -> None:
    cache = tmp_path / "cache"
    first = ensure_dequantized(gguf_file, cache)
    size = (first.folder / "model.safetensors").stat().st_size
    damage(first.folder)

    model, tokenizer, copy = load_gguf_chat_model(gguf_file, cache)
    assert copy.built and copy.folder == first.folder
    assert torch.equal(_last_logits(model, tokenizer), tiny_gguf[1])
    assert (copy.folder / "model.safetensors").stat().st_size == size
    assert _copies(cache) == [copy.folder]  # no temporary or trash folder left


def test_a_failed_build_leaves_no_copy_and_leftovers_of_an_interrupted_one_are_removed(
    tmp_path: Path, gguf_file: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    name = f"{gguf_file.stem}-{gguf_sha256(gguf_file, cache)[:16]}"
    # What a run killed halfway through writing leaves: a temporary folder, half a file.
    leftover = cache / f".tmp-{name}-killed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 100)

    truncated = tmp_path / "broken" / "tiny.gguf"
    truncated.parent.mkdir()
    truncated.write_bytes(gguf_file.read_bytes()[: gguf_file.stat().st_size // 2])
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises on a cut GGUF
        ensure_dequantized(truncated, cache)
    assert _copies(cache) == [leftover]  # the failed build left nothing of its own

    copy = ensure_dequantized(gguf_file, cache)
    assert copy.built
    assert _copies(cache) == [copy.folder]


def test_concurrent_first_loads_build_once(tmp_path: Path, gguf_file: Path) -> None:
    cache = tmp_path / "cache"
    results: list = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_dequantized(gguf_file, cache))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3
    assert sum(r.built for r in results) == 1
    assert {r.folder for r in results} == {results[0].folder}
    assert _copies(cache) == [results[0].folder]
