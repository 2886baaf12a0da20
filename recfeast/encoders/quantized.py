"""Int8 text encoder for CPU serving: PyTorch dynamic quantisation of the BERT encoder's linear layers.

Dynamic quantisation (PyTorch, "Dynamic Quantization" tutorial and ``torch.ao.quantization.quantize_dynamic``;
the recipe Q8BERT applies to BERT, Zafrir et al. 2019, arXiv:1910.06188) stores the weights of every
``nn.Linear`` as int8 and, at each call, quantises the activations to uint8 with a scale computed from
that call's input, multiplies in int8 with int32 accumulation, and returns float. Word embeddings,
LayerNorm, softmax, GELU and the pooling stay in float32. The text encoder's output contract is
unchanged (``(n, 384) float32``, L2-normalised); only the model identity differs.

Two settings differ from ``quantize_dynamic``'s defaults, chosen by measuring agreement with the full
model on MovieLens item texts (``bench/bench_quantized.py``, BENCHMARKS.md):

- per-channel weight scales (one scale per output row, ``per_channel_dynamic_qconfig``) instead of one
  per matrix;
- full 8-bit activation range (``reduce_range=False``). PyTorch's dynamic linear always passes
  ``reduce_range=True`` (7-bit activations) so that fbgemm's u8 x s8 pair sums cannot saturate int16 on
  CPUs without VNNI; on CPUs with VNNI (``avx512_vnni``/``avx_vnni``, int32 accumulation) the full range
  is exact, which PyTorch's quantisation docs also recommend for the onednn backend.

Limits, measured and documented, not hidden:

- The activation scale is per call over the whole padded batch, so an item's int8 embedding depends
  slightly on the other texts in its batch (with the full model it does not, beyond float rounding).
  ``encode(texts, batch_size=1)`` makes each embedding a function of its text alone.
- ``torch.ao.quantization`` is marked deprecated in favour of torchao's ``quantize_`` but works in the
  pinned torch 2.14.1; its deprecation warnings are silenced here. The migration path is torchao's
  ``Int8DynamicActivationInt8WeightConfig``.
"""

from __future__ import annotations

import copy
import io
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from recfeast.errors import ConfigError, ModelError
from recfeast.encoders.identity import model_identity
from recfeast.encoders.text import TextEncoder

WEIGHT_SCHEMES = ("per_channel", "per_tensor")
DTYPES = ("qint8",)
MODULES = ("Linear", "Embedding")


@dataclass(frozen=True)
class QuantizationConfig:
    """Settings of the dynamic quantisation; every field enters the quantised model's identity.

    Attributes:
        dtype: weight dtype; only ``"qint8"`` (int8 weights, uint8 activations, int32 accumulation).
        weight_scheme: ``"per_channel"`` (one symmetric scale per output row; default) or
            ``"per_tensor"`` (one scale per matrix; ``quantize_dynamic``'s default).
        reduce_range: 7-bit activations as PyTorch's dynamic linear uses (True), or the full 8 bits
            (False, default; exact on CPUs with VNNI, see the module docstring).
        engine: quantised backend that packs the weights, one of
            ``torch.backends.quantized.supported_engines`` (``"x86"`` default; ``"fbgemm"``,
            ``"onednn"``, ``"qnnpack"``).
        modules: module types to quantise: ``("Linear",)`` (default) or ``("Linear", "Embedding")``,
            which also stores the embedding tables as uint8 with a float scale and offset per row
            (``float_qparams_weight_only_qconfig``): a smaller model, no faster.
    """

    dtype: str = "qint8"
    weight_scheme: str = "per_channel"
    reduce_range: bool = False
    engine: str = "x86"
    modules: tuple[str, ...] = ("Linear",)

    def validate(self) -> "QuantizationConfig":
        """Return ``self`` if usable here.

        Raises:
            ConfigError: an unknown dtype, weight scheme or module type, a non-bool ``reduce_range``,
                or an engine this torch build does not support.
        """
        import torch

        if self.dtype not in DTYPES:
            raise ConfigError(f"quantization dtype {self.dtype!r}: expected one of {DTYPES}")
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise ConfigError(f"quantization weight_scheme {self.weight_scheme!r}: expected one of {WEIGHT_SCHEMES}")
        if not isinstance(self.reduce_range, bool):
            raise ConfigError(f"quantization reduce_range {self.reduce_range!r}: expected True or False")
        mods = tuple(self.modules)
        if "Linear" not in mods or any(m not in MODULES for m in mods) or len(set(mods)) != len(mods):
            raise ConfigError(f"quantization modules {mods!r}: expected ('Linear',) or ('Linear', 'Embedding')")
        engines = list(torch.backends.quantized.supported_engines)
        if self.engine not in engines or self.engine == "none":
            raise ConfigError(f"quantization engine {self.engine!r}: this torch supports {engines}")
        return self


@contextmanager
def _engine(name: str):
    """Set ``torch.backends.quantized.engine`` for the block, then restore it."""
    import torch

    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _linear_class(reduce_range: bool):
    """The dynamic quantised Linear whose forward uses ``reduce_range`` (PyTorch's always uses True)."""
    import torch
    import torch.ao.nn.quantized.dynamic as nnqd

    if reduce_range:
        return nnqd.Linear

    class FullRangeDynamicLinear(nnqd.Linear):
        """``torch.ao.nn.quantized.dynamic.Linear`` with 8-bit activations (``reduce_range=False``)."""

        def forward(self, x):
            if self._packed_params.dtype != torch.qint8:  # pragma: no cover - only qint8 is configured
                return super().forward(x)
            return torch.ops.quantized.linear_dynamic(
                x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)

        def _get_name(self):
            return "FullRangeDynamicQuantizedLinear"

    return FullRangeDynamicLinear


def quantize_linear_layers(model, config: QuantizationConfig):
    """Dynamically quantise the ``nn.Linear`` layers of ``model`` (in place) and return it.

    Args:
        model: a float32 torch module on the CPU (e.g. a transformers ``BertModel``).
        config: the settings, validated here.

    Returns:
        The same module with each ``nn.Linear`` replaced by a dynamic int8 linear; eval mode.

    Raises:
        ConfigError: ``config`` is not usable here.
        ModelError: torch refused to quantise the model.
    """
    import torch
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization import (default_dynamic_qconfig, float_qparams_weight_only_qconfig,
                                       per_channel_dynamic_qconfig, quantize_dynamic)

    config.validate()
    qconfig = per_channel_dynamic_qconfig if config.weight_scheme == "per_channel" else default_dynamic_qconfig
    spec = {torch.nn.Linear: qconfig}
    mapping = {torch.nn.Linear: _linear_class(config.reduce_range)}
    if "Embedding" in config.modules:
        spec[torch.nn.Embedding] = float_qparams_weight_only_qconfig
        mapping[torch.nn.Embedding] = nnq.Embedding
    with _engine(config.engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated", category=UserWarning)
        try:
            return quantize_dynamic(model, spec, dtype=torch.qint8, mapping=mapping, inplace=True).eval()
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise ModelError(f"dynamic quantisation with {config} failed: {exc}") from exc


def _identity_tensors(model) -> dict:
    """Tensors that determine a dynamically quantised model's output: integer weights with their scales
    and zero points, biases, and every float parameter and buffer left unquantised."""
    import torch

    def add(key, t):
        if not t.is_quantized:
            out[key] = t
            return
        out[f"{key}.int"] = t.int_repr()
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            out[f"{key}.scales"] = torch.tensor([t.q_scale()], dtype=torch.float64)
            out[f"{key}.zero_points"] = torch.tensor([t.q_zero_point()], dtype=torch.int64)
        else:
            out[f"{key}.scales"] = t.q_per_channel_scales()
            out[f"{key}.zero_points"] = t.q_per_channel_zero_points()

    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            add(key, value)
        elif isinstance(value, tuple):  # a dynamic linear's (packed int8 weight, bias)
            weight, bias = value
            add(f"{key}.weight", weight)
            if bias is not None:
                add(f"{key}.bias", bias)
    return out


def weight_bytes(model) -> int:
    """Bytes of the weights a model holds in memory: float parameters and buffers at their dtype, int8
    weights at one byte each plus their scales and zero points (the packed kernel layout adds a little)."""
    return int(sum(t.numel() * t.element_size() for t in _identity_tensors(model).values()))


def serialized_bytes(model) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``: the model's size on disk."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


class QuantizedTextEncoder(TextEncoder):
    """The text encoder with int8 linear layers, for CPU serving: same :meth:`encode` contract.

    ``encode(texts, batch_size=64, normalize=True, show_progress_bar=False)`` returns ``(n, dim)``
    float32 rows (L2-normalised by default) in input order, as :class:`TextEncoder` does, from the
    same tokenizer, truncation, mean pooling and normalisation; the BERT's linear layers run in int8
    (see the module docstring for the method and its limits). Runs on the CPU only.

    :attr:`model_id` is ``"<name>-int8@sha256:<12 hex>"`` over the int8 weights with their scales, the
    float weights left, the quantisation settings and the full model's identity, so int8 embeddings
    can never be taken for full-precision ones; :attr:`source_model_id` is the full model's identity.

    Args:
        model_path, name, max_length: as :class:`TextEncoder` (the full model to quantise).
        config: :class:`QuantizationConfig`; default per-channel int8 weights, 8-bit activations, x86.

    Raises:
        ConfigError: an unusable ``config`` (checked before the model is loaded).
        ModelError: the model cannot be loaded or quantised.
    """

    def __init__(self, model_path: str | Path | None = None, name: str | None = None,
                 max_length: int | None = None, config: QuantizationConfig | None = None):
        config = (config or QuantizationConfig()).validate()
        super().__init__(model_path=model_path, name=name, max_length=max_length, device="cpu")
        self._quantize(config)

    @classmethod
    def from_encoder(cls, encoder: TextEncoder, config: QuantizationConfig | None = None) -> "QuantizedTextEncoder":
        """Quantise a copy of a loaded full :class:`TextEncoder` (no reload; ``encoder`` is unchanged).

        Raises:
            ConfigError: ``encoder`` is not a full-precision :class:`TextEncoder`, or ``config`` is unusable.
            ModelError: quantisation failed.
        """
        import torch

        if not isinstance(encoder, TextEncoder) or isinstance(encoder, QuantizedTextEncoder):
            raise ConfigError(f"from_encoder needs a full-precision TextEncoder, got {type(encoder).__name__}")
        config = (config or QuantizationConfig()).validate()
        self = cls.__new__(cls)
        self.__dict__.update(encoder.__dict__)  # tokenizer (shared, read-only), path, name, dim, max_length
        self.precision = "fp32"  # int8 linears; no bf16 autocast around them
        self.model = copy.deepcopy(encoder.model).to("cpu").eval()
        self.device = torch.device("cpu")
        self._quantize(config)
        return self

    def _quantize(self, config: QuantizationConfig) -> None:
        self.source_model_id = self.model_id
        self.config = config
        self.model = quantize_linear_layers(self.model, config)
        self.model_id = model_identity(
            f"{self.name}-int8", _identity_tensors(self.model),
            {"pooling": "mean", "normalize": True, "max_length": self.max_length, "source": self.source_model_id,
             "quantization": {"method": "torch_dynamic", **asdict(config), "modules": list(config.modules)}},
        )
