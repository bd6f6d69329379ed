"""Configuration of the Hydra encoders (text and image) for HuggingFace transformers.

One config class serves every mixer in the registry: ``matrix_mixer_type``
names the sequence mixer ("hydra", "mha", or any other registered name). The
config's own mixer fields (d_state, headdim, ...) reach the mixers whose
constructors take them, as read from the constructor's signature; the
``mixer_options`` dict is handed to the mixer as given, and every key in it
must be an option of that mixer.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from .._checks import (
    check_bool,
    check_choice,
    check_nonnegative_int,
    check_number,
    check_options,
    check_positive_int,
    check_probability,
    did_you_mean,
)
from ..mixers import SequenceMixer, available_mixers, build_mixer, get_mixer_class  # registers the built-in mixers
from ..mixers.registry import accepted_options

POOLING_MODES = ("cls", "mean")
MIXER_INITS = ("bert", "own")  # the init of the mixers' Linear layers: the model's normal one, or their own

# Names PretrainedConfig itself handles; any other unknown keyword becomes a plain attribute.
_BASE_FIELDS = (frozenset(inspect.signature(PretrainedConfig.__init__).parameters) | frozenset(dir(PretrainedConfig))
                | frozenset(PretrainedConfig().to_dict()))
# An unknown keyword this similar (difflib ratio) to a HydraConfig field is taken for a typo of it.
# 0.76 keeps e.g. "bos_token_id" (0.75 from "pad_token_id") a legitimate extra attribute.
_TYPO_CUTOFF = 0.76


class HydraConfig(PretrainedConfig):
    r"""Configuration of :class:`HydraModel` and its task heads.

    Field names and defaults follow the BERT configuration of the Hydra paper's
    reference code (a bert-base-uncased config extended with mixer fields), so
    its configs and checkpoints map one to one.

    Text encoder:
        vocab_size (int): vocabulary size (30528 = bert-base-uncased padded to a multiple of 8).
        hidden_size (int): model width.
        num_hidden_layers (int): number of blocks.
        type_vocab_size (int): number of token types (segment ids); 0 disables the embedding.
        use_position_embeddings (bool): add learned absolute position embeddings
            (the paper's Hydra BERT has none: the mixer is position-aware).
        max_position_embeddings (int): longest sequence (position table size; also
            the sequence length of data-independent mixers).
        pad_token_id (int): id of the padding token.

    Blocks:
        matrix_mixer_type (str): registered mixer name: "hydra", "mha" (softmax
            attention baseline), or any other name known to the mixer registry.
        is_prenorm (bool): pre-norm blocks with a final LayerNorm, instead of
            the reference's post-norm blocks ``LayerNorm(x + mixer(x))``.
        intermediate_size (int): width of an optional MLP after each mixer; 0
            (default) means mixer-only blocks, as in the paper.
        hidden_act (str): activation of the MLP and of the masked-LM head.
        block_norm_eps (float): epsilon of the per-block LayerNorms (1e-5 in the reference).
        layer_norm_eps (float): epsilon of the embedding, final and head LayerNorms.
        hidden_dropout_prob (float): dropout on embeddings, MLP outputs and classifier inputs.
        attention_probs_dropout_prob (float): passed to mixers as ``dropout`` (attention dropout of "mha").
        classifier_dropout (float or None): dropout before classifiers; defaults to hidden_dropout_prob.
        initializer_range (float): std of the normal init of Linear and Embedding weights.
        mixer_init ("bert" | "own"): "bert" (default) gives the mixers' Linear layers
            (projections) the same normal init as every other Linear, as the reference
            does; "own" leaves them the init they were built with (PyTorch's default,
            uniform in +-1/sqrt(fan_in), as mamba_ssm's models keep).

    Mixer options (each passed to the mixers whose constructor takes it):
        d_state, d_conv, expand, headdim, ngroups, chunk_size: Hydra / SSM options.
        is_data_dependent (bool or None), qk_dim (int): matrix-mixer options; None
            leaves the form to the mixer (data-dependent where it has that form; the
            reference's default is True). Data-independent mixers size their parameters
            by ``max_position_embeddings``.
        num_attention_heads (int): heads of "mha".
        mixer_options (dict): any further keyword arguments for the mixer; each must be an
            option of the mixer named by ``matrix_mixer_type`` (a typo raises, naming the
            closest option).

    Heads:
        pooling ("cls" | "mean"): sequence summary for classification. Text:
            "cls" takes the first valid token through a dense+tanh pooler (BERT),
            "mean" averages the valid tokens through the same pooler. Image:
            "cls" prepends a learned class token, "mean" averages the patches.
        num_labels / problem_type / id2label / label2id: as in every transformers config.

    Image encoder (HydraForImageClassification):
        image_size, patch_size, num_channels: ViT-style non-overlapping patches.

    Every field is validated on construction (and so on ``from_pretrained``): a
    ValueError names the field and what was expected. When ``matrix_mixer_type``
    is a registered mixer, the mixer is also built once on the meta device (no
    memory), so values only the mixer can judge (``mixer_options={"scan_impl": ...}``,
    an even ``d_conv``) fail here and not when the model is built. A config
    naming a mixer that is not registered (yet) still loads, so a saved config
    of a custom mixer can be read before its code registers it; the mixer
    checks (:meth:`validate_mixer`, an unknown name included) then run when a
    model is built. An unknown keyword that looks like a misspelt field
    (``d_sate``) raises; other unknown keywords are kept as attributes, as
    transformers does.
    """

    model_type = "hydra"

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 768,
        num_hidden_layers: int = 23,
        matrix_mixer_type: str = "hydra",
        is_data_dependent: bool | None = None,
        d_state: int = 64,
        d_conv: int = 7,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        qk_dim: int = 16,
        chunk_size: int = 64,
        num_attention_heads: int = 12,
        mixer_options: dict | None = None,
        is_prenorm: bool = False,
        intermediate_size: int = 0,
        hidden_act: str = "gelu",
        use_position_embeddings: bool = False,
        max_position_embeddings: int | None = 512,
        type_vocab_size: int = 2,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        classifier_dropout: float | None = None,
        layer_norm_eps: float = 1e-12,
        block_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        pooling: str = "cls",
        mixer_init: str = "bert",
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        pad_token_id: int = 0,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.matrix_mixer_type = matrix_mixer_type
        self.is_data_dependent = is_data_dependent
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.ngroups = ngroups
        self.qk_dim = qk_dim
        self.chunk_size = chunk_size
        self.num_attention_heads = num_attention_heads
        if mixer_options is None:
            mixer_options = {}
        self.mixer_options = dict(mixer_options) if isinstance(mixer_options, dict) else mixer_options  # checked below
        self.is_prenorm = is_prenorm
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.use_position_embeddings = use_position_embeddings
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.layer_norm_eps = layer_norm_eps
        self.block_norm_eps = block_norm_eps
        self.initializer_range = initializer_range
        self.pooling = pooling
        self.mixer_init = mixer_init
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        own = [k for k in inspect.signature(HydraConfig.__init__).parameters if k not in ("self", "kwargs")]
        for key in kwargs:
            hint = "" if key in _BASE_FIELDS else did_you_mean(key, own, cutoff=_TYPO_CUTOFF)
            if hint:
                raise ValueError(f"HydraConfig got an unknown field {key!r}{hint}")
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_hydra()

    # ------------------------------------------------------------ validation
    def validate_hydra(self) -> None:
        """Raise a ValueError naming the field when the configuration cannot build a model."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "image_size", "patch_size", "num_channels",
                     "d_state", "d_conv", "expand", "headdim", "ngroups", "qk_dim", "chunk_size",
                     "num_attention_heads"):
            check_positive_int(f"HydraConfig.{name}", getattr(self, name))
        check_positive_int("HydraConfig.num_labels", self.num_labels)
        for name in ("is_prenorm", "use_position_embeddings", "tie_word_embeddings"):
            check_bool(f"HydraConfig.{name}", getattr(self, name))
        for name in ("type_vocab_size", "intermediate_size"):
            check_nonnegative_int(f"HydraConfig.{name}", getattr(self, name))
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            check_probability(f"HydraConfig.{name}", getattr(self, name))
        if self.classifier_dropout is not None:
            check_probability("HydraConfig.classifier_dropout", self.classifier_dropout)
        for name in ("layer_norm_eps", "block_norm_eps"):
            check_number(f"HydraConfig.{name}", getattr(self, name), low=0, low_open=True, what="a positive number")
        check_number("HydraConfig.initializer_range", self.initializer_range, low=0, what="a non-negative number")
        check_choice("HydraConfig.hidden_act", self.hidden_act, sorted(ACT2FN))
        pad = self.pad_token_id
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < self.vocab_size):
            raise ValueError(f"HydraConfig.pad_token_id must be in [0, {self.vocab_size}) (the vocabulary) or None, "
                             f"got {pad!r}")
        if self.is_data_dependent not in (True, False, None):
            raise ValueError(f"HydraConfig.is_data_dependent must be True, False or None, got {self.is_data_dependent!r}")
        check_choice("HydraConfig.pooling", self.pooling, POOLING_MODES)
        check_choice("HydraConfig.mixer_init", self.mixer_init, MIXER_INITS)
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"HydraConfig.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        mpe = self.max_position_embeddings
        check_positive_int("HydraConfig.max_position_embeddings", mpe, allow_none=True)
        if self.use_position_embeddings and mpe is None:
            raise ValueError("HydraConfig: use_position_embeddings=True needs max_position_embeddings")
        if not isinstance(self.matrix_mixer_type, str) or not self.matrix_mixer_type:
            raise ValueError(f"HydraConfig.matrix_mixer_type must be a mixer name (a non-empty string), "
                             f"got {self.matrix_mixer_type!r}")
        if not isinstance(self.mixer_options, dict):
            raise ValueError(f"HydraConfig.mixer_options must be a dict, got {type(self.mixer_options).__name__}")
        if self.matrix_mixer_type in available_mixers():
            self.validate_mixer()

    def validate_mixer(self) -> None:
        """The checks that need the mixer's class from the registry (an unknown name raises here);
        run on construction for a registered mixer, and by the models before they build one."""
        try:
            mixer_cls = get_mixer_class(self.matrix_mixer_type)
        except ValueError as err:
            raise ValueError(f"HydraConfig.matrix_mixer_type: {err}") from None
        mpe = self.max_position_embeddings
        accepted = accepted_options(mixer_cls)
        if accepted is not None:
            try:
                check_options(f"the {self.matrix_mixer_type!r} mixer", self.mixer_options, accepted)
            except ValueError as err:
                raise ValueError(f"HydraConfig.mixer_options: {err}") from None

        def takes(name):  # named by the constructor (a **kwargs mixer checks its options itself, when built below)
            return accepted is not None and name in accepted

        options = self.mixer_kwargs(seq_len=mpe)
        if takes("headdim") and "headdim" in options:
            width = options.get("expand", 1) * self.hidden_size if takes("expand") else self.hidden_size
            if width % options["headdim"] != 0:
                raise ValueError(
                    f"HydraConfig: hidden_size * expand ({width}) must be divisible by headdim ({options['headdim']}) "
                    f"for matrix_mixer_type={self.matrix_mixer_type!r}")
        if takes("num_heads") and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"HydraConfig: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}) for matrix_mixer_type={self.matrix_mixer_type!r}")
        data_independent = self.is_data_dependent is False or (
            self.is_data_dependent is None and "sam" not in getattr(mixer_cls, "forms", SequenceMixer.forms))
        if data_independent and mpe is None and (takes("is_data_dependent") or takes("max_seq_len")):
            raise ValueError(
                f"HydraConfig: the data-independent mixer {self.matrix_mixer_type!r} (is_data_dependent=False) sizes its "
                "parameters by the sequence length: set max_position_embeddings")
        # the mixer's own checks, on the meta device: nothing is allocated
        try:
            with torch.device("meta"):
                build_mixer(self.matrix_mixer_type, self.hidden_size, **options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"HydraConfig (matrix_mixer_type={self.matrix_mixer_type!r}): {err}") from None

    # ------------------------------------------------------------ mixer kwargs
    def mixer_kwargs(self, seq_len: int | None = None, layer_idx: int | None = None) -> dict:
        """Keyword arguments for ``build_mixer(matrix_mixer_type, hidden_size, **kwargs)``: the
        config's mixer fields that the mixer's constructor takes, then ``mixer_options``.

        ``seq_len`` is the (maximum) sequence length the mixer sees: it caps the
        chunk size (as the reference does) and sizes data-independent mixers.
        """
        chunk = self.chunk_size if seq_len is None else min(self.chunk_size, seq_len)
        generic = dict(
            d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, headdim=self.headdim, ngroups=self.ngroups,
            chunk_size=chunk, qk_dim=self.qk_dim, num_heads=self.num_attention_heads,
            dropout=self.attention_probs_dropout_prob, layer_idx=layer_idx,
        )
        if self.is_data_dependent is not None:
            generic["is_data_dependent"] = self.is_data_dependent
        if seq_len is not None:
            generic["max_seq_len"] = seq_len
        accepted = accepted_options(get_mixer_class(self.matrix_mixer_type))
        kwargs = {k: v for k, v in generic.items() if accepted is None or k in accepted}
        kwargs.update(self.mixer_options)
        return kwargs

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_seq_len(self) -> int:
        """Tokens the image encoder mixes: the patches, plus the class token with pooling="cls"."""
        return self.num_patches + (1 if self.pooling == "cls" else 0)

    # ------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As in transformers, plus: a config saved with model_type "hydra" by an image model
        (before image models had their own model_type) loads as a :class:`HydraVisionConfig`,
        so the Auto classes resolve it to the image models."""
        if cls is HydraConfig and IMAGE_ARCHITECTURES & set(config_dict.get("architectures") or ()):
            upgraded = {k: v for k, v in config_dict.items() if k != "model_type"}
            return HydraVisionConfig.from_dict(upgraded, **kwargs)
        return super().from_dict(config_dict, **kwargs)


IMAGE_ARCHITECTURES = frozenset({"HydraVisionModel", "HydraForImageClassification"})


class HydraVisionConfig(HydraConfig):
    r"""Configuration of :class:`HydraVisionModel` and :class:`HydraForImageClassification`.

    The fields and defaults are those of :class:`HydraConfig` (the image fields
    ``image_size``, ``patch_size``, ``num_channels`` included; the text fields are
    unused). Its own ``model_type`` ("hydra_vision") lets ``AutoModel`` give the
    image encoder and ``AutoImageProcessor`` the image processor.
    """

    model_type = "hydra_vision"

    def __init__(self, **kwargs):
        # Defined here so that transformers >= 5 keeps HydraConfig's constructor
        # instead of generating a dataclass one for this subclass.
        super().__init__(**kwargs)
