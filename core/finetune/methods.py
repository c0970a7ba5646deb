"""The menu of adaptation methods: one table (``METHODS``) with what each method trains, where it
fits, and how it is applied to a model; adding a method touches this table only.

``apply(model, settings)`` returns the model ready to train (a peft model for the peft methods; the
same model with only the chosen parameters trainable otherwise) and never changes which weights
the caller's other copies hold: peft wraps the model, the freezing methods set ``requires_grad``.
``trainable(model)`` counts what will be trained. QLoRA (core/finetune/qlora.py) builds a new 4-bit
model instead and leaves its input alone; bottleneck adapters (core/finetune/adapters.py) are
written here, as peft has none and the adapters library needs transformers 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import QuantTuneError

LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class MethodSettings:
    method: str = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LINEAR_TARGETS
    virtual_tokens: int = 20  # prefix, prompt and P-tuning
    top_layers: int = 2  # partial fine-tuning: the top N decoder blocks (and the head)
    adapter_size: int = 16  # bottleneck adapters: the width of the small layer inside each block
    qat_bits: int = 4  # quantization-aware training: the grid the base weights train on
    qat_group_size: int = 64  # 0: one scale per output channel
    qat_symmetric: bool = False
    qat_scales: str = "moving_average"  # "moving_average" (observed on the fly) or "lsq" (learned)
    qat_lora: bool = True  # LoRA on the fake-quantized base; False: every base weight trains
    qat_watch: str = ""  # the layer whose S and Z are reported each step; "": the first one

    def validate(self) -> list[str]:
        problems = []
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r} (choose {', '.join(METHODS)})")
        if self.rank < 1 or self.alpha < 1:
            problems.append("LoRA's rank and alpha must be 1 or more")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout lies in [0, 1)")
        if self.virtual_tokens < 1:
            problems.append("at least one virtual token")
        if self.method in ("lora", "dora", "qlora", "ia3") and not self.target_modules:
            problems.append("choose at least one kind of layer to adapt")
        if self.top_layers < 1:
            problems.append("partial fine-tuning trains at least the top layer")
        if self.adapter_size < 1:
            problems.append("a bottleneck adapter is at least 1 unit wide")
        return problems


@dataclass(frozen=True)
class Method:
    key: str
    title: str
    explanation: str
    best_when: str
    apply: Callable[[Any, MethodSettings], Any] = field(repr=False)
    # what the method reports after each step beside the loss (QAT: the watched layer's S and Z)
    metrics: Callable[[Any], dict[str, float]] | None = field(default=None, repr=False)
    # whether the result folds into a plain transformers model (TrainParams.save_merged)
    mergeable: bool = True
    # apply builds a new model and leaves its input alone (QLoRA): the Train step passes the loaded
    # model itself instead of a float copy
    builds_own_model: bool = False


@dataclass(frozen=True)
class Trainable:
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / max(1, self.total)


def trainable(model: Any) -> Trainable:
    total, train = 0, 0
    for name, p in model.named_parameters():  # tied weights are listed once
        if ".observed_" in name:
            continue  # QAT's moving averages: kept as parameters to be checkpointed, never trained
        # bitsandbytes packs two 4-bit weights per byte (as peft counts them)
        count = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        total += count
        train += count if p.requires_grad else 0
    return Trainable(train, total)


def apply(model: Any, settings: MethodSettings) -> Any:
    problems = settings.validate()
    if problems:
        raise QuantTuneError("The method's settings have problems: " + "; ".join(problems) + ".",
                             "Correct the settings listed.")  # fmt: skip
    return METHODS[settings.method].apply(model, settings)


# -- the freezing methods -----------------------------------------------------------------------
def is_sequence_classifier(model: Any) -> bool:
    """A transformers sequence classifier (text classification), not a language model."""
    return type(model).__name__.endswith("ForSequenceClassification")


def head_ids(model: Any) -> set[int]:
    """The new classification head's parameters (none for a language model): it always trains."""
    if not is_sequence_classifier(model):
        return set()
    base = {id(p) for p in model.base_model.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in base}


def _freeze_all_but(model: Any, keep: Callable[[str], bool]) -> Any:
    head = head_ids(model)
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name) or id(param) in head)
    return model


def _feature(model: Any, _s: MethodSettings) -> Any:
    if not is_sequence_classifier(model):
        raise QuantTuneError(
            "Feature extraction trains a new classification head on the frozen model, so it only works "
            "for text classification.",
            "Choose the text-classification task (rows of text and label), or another method.",
        )
    return _freeze_all_but(model, lambda _name: False)


def _full(model: Any, _s: MethodSettings) -> Any:
    return _freeze_all_but(model, lambda _name: True)


def _partial(model: Any, s: MethodSettings) -> Any:
    from core.quant.calibration import decoder_blocks

    blocks = decoder_blocks(model)
    top = {id(p) for block in list(blocks)[-s.top_layers :] for p in block.parameters()}
    head = model.get_output_embeddings()
    top |= {id(p) for p in head.parameters()} if head is not None else head_ids(model)
    for _name, param in model.named_parameters():
        param.requires_grad_(id(param) in top)
    return model


def _bitfit(model: Any, _s: MethodSettings) -> Any:
    if not any(name.endswith(".bias") for name, _ in model.named_parameters()):
        raise QuantTuneError(
            "This model has no bias terms, so BitFit would train nothing.",
            "Choose norm-only tuning (LN tuning): it trains the normalisation weights instead, as few.",
        )
    return _freeze_all_but(model, lambda name: name.endswith(".bias"))


def _norms(model: Any, _s: MethodSettings) -> Any:
    """Norm-only tuning by freezing: peft's LN tuning warns on RMSNorm, and freezing is the whole method."""
    norms = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters()}
    norms |= head_ids(model)
    for _name, param in model.named_parameters():
        param.requires_grad_(id(param) in norms)
    return model


# -- the peft methods ---------------------------------------------------------------------------
def _peft(make_config: Callable[[MethodSettings], Any]) -> Callable[[Any, MethodSettings], Any]:
    def apply_peft(model: Any, s: MethodSettings) -> Any:
        import warnings

        from peft import TaskType, get_peft_model

        config = make_config(s)
        if is_sequence_classifier(model):  # peft then trains and saves the new head too (modules_to_save)
            config.task_type = TaskType.SEQ_CLS
        with warnings.catch_warnings():
            # peft 0.21 still calls a transformers 5 name it deprecated; nothing for users to do
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            return get_peft_model(model, config)

    return apply_peft


def _lora_config(s: MethodSettings, dora: bool = False) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                      target_modules=list(s.target_modules), use_dora=dora)  # fmt: skip


def _ia3_config(s: MethodSettings) -> Any:
    from peft import IA3Config, TaskType

    targets = [t for t in s.target_modules if t in ("k_proj", "v_proj", "down_proj")] or ["k_proj", "v_proj"]
    feedforward = [t for t in targets if t in ("down_proj", "up_proj", "gate_proj")]
    return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=feedforward)


def _virtual(kind: str) -> Callable[[MethodSettings], Any]:
    def config(s: MethodSettings) -> Any:
        import peft

        cls = {"prefix": peft.PrefixTuningConfig, "prompt": peft.PromptTuningConfig,
               "ptuning": peft.PromptEncoderConfig}[kind]  # fmt: skip
        return cls(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=s.virtual_tokens)

    return config


def _own_module(name: str) -> Callable[[Any, MethodSettings], Any]:
    """A method written in its own module (qlora, adapters), imported on first use: it imports torch."""

    def apply_from_module(model: Any, s: MethodSettings) -> Any:
        import importlib

        return importlib.import_module(f"core.finetune.{name}").apply(model, s)

    return apply_from_module


def _qat_metrics(model: Any) -> dict[str, float]:
    from core.finetune import qat  # imports torch: on first use

    return qat.metrics(model)


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("full", "Full fine-tuning", "Every weight is trained.",
               "you have the memory for weights, gradients and optimizer state, and much data", _full),
        Method("partial", "Partial fine-tuning", "Only the top N decoder blocks and the head are trained.",
               "the task is close to what the model knows; less memory than full", _partial),
        Method("feature", "Feature extraction", "The whole model is frozen and used as a feature extractor; "
               "only a new classification head on its last token is trained.",
               "text classification with little data or time: the fastest and smallest to train", _feature),
        Method("lora", "LoRA", "Small low-rank matrices A·B are added to the chosen layers and trained; the "
               "weights stay frozen.", "the default: little memory, quality near full fine-tuning",
               _peft(_lora_config)),
        Method("dora", "DoRA", "LoRA with each weight's magnitude and direction trained apart.",
               "LoRA at low ranks falls short of full fine-tuning", _peft(lambda s: _lora_config(s, True))),
        Method("qlora", "QLoRA", "LoRA on a copy of the model whose weights are stored in 4 bits (NF4, "
               "bitsandbytes); the adapters train in full precision.",
               "memory is short: the frozen weights take about a quarter of their float32 size",
               _own_module("qlora"), builds_own_model=True),
        Method("qat", "Quantization-aware training (QAT)", "The weights train as they will be stored: "
               "each forward pass rounds them to the integer grid (straight-through gradients), with scales "
               "and zero points followed by moving averages or learned (LSQ); LoRA or every weight trains. "
               "At the end the model is quantized for real with the learned scales and compared with plain "
               "quantization.",
               "the model will run quantized at few bits (INT4) and plain quantization loses too much",
               _own_module("qat"), metrics=_qat_metrics, mergeable=False),
        Method("ia3", "IA3", "Learned vectors rescale the keys, values and feed-forward activations.",
               "very few trainable parameters are wanted", _peft(_ia3_config)),
        Method("prefix", "Prefix tuning", "Trained key/value vectors are prepended in every layer.",
               "generation tasks with a frozen model", _peft(_virtual("prefix")), mergeable=False),
        Method("prompt", "Prompt tuning", "Trained embeddings (a soft prompt) are prepended to the input.",
               "the fewest parameters; works best on larger models", _peft(_virtual("prompt")),
               mergeable=False),
        Method("ptuning", "P-tuning", "A small network produces the soft prompt.",
               "prompt tuning is unstable", _peft(_virtual("ptuning")), mergeable=False),
        Method("adapters", "Bottleneck adapters", "A small two-layer network (down to a few units and back "
               "up) is inserted after the feed-forward part of every block and trained; the rest is frozen.",
               "several tasks share one model: each keeps only its small adapters", _own_module("adapters"),
               mergeable=False),
        Method("bitfit", "BitFit", "Only the bias terms are trained.",
               "a model with biases and a quick, tiny adaptation", _bitfit),
        Method("ln", "Norm-only (LN tuning)", "Only the normalisation layers' weights are trained.",
               "models without biases, where BitFit has nothing to train", _norms),
    )
}  # fmt: skip
