"""What a finished run leaves in ``output/final``: the adapter (peft methods) or the trained tensors
(freezing methods) with the method settings, and with ``merged`` also ``final/merged``: the model with
its adapter folded in, loadable with transformers alone. ``core.finetune.runs.load_trained`` reads it
back; torch and peft are imported on first use.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.atomic import staged_dir, write_json
from core.errors import QuantTuneError
from core.finetune import classify, methods
from core.finetune.checkpoints import WEIGHTS, trainable_tensors

MERGED = "merged"  # in final/: the model with the adapter folded in (TrainParams.save_merged)


def save_final(
    model: Any, settings: methods.MethodSettings, folder: Path, *, merged: bool = False, tokenizer: Any = None
) -> Path:
    """The adapter (peft methods) or the trained tensors (freezing methods), with the method settings;
    with ``merged`` also ``merged/``: the whole model, adapter folded in, as a plain transformers folder
    (weights, config, and ``tokenizer`` when given)."""
    from safetensors.torch import save_file

    if merged and (why := merge_problem(settings)):
        raise QuantTuneError(why + ".", "Save the adapter alone: turn off saving a merged model.")
    with staged_dir(folder) as tmp:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json
        # every trained tensor by its name in the trained model: what QuantTune reloads exactly (QAT's
        # scales and QLoRA's adapter on its 4-bit base too, which peft's adapter alone cannot rebuild)
        save_file(trainable_tensors(model), str(tmp / WEIGHTS))
        write_json(tmp / "method.json", asdict(settings))
        if classify.is_classifier(model):
            classify.save_labels(tmp, model)  # with the head's tensors: all a reload needs
        if merged:
            save_merged(model, tokenizer, tmp / MERGED)
    return folder


def merge_problem(settings: methods.MethodSettings) -> str | None:
    """Why the method's result cannot be folded into a plain transformers model (None: it can)."""
    method = methods.METHODS.get(settings.method)
    if method is None or method.mergeable:
        return None
    if settings.method == "qat":
        return ("quantization-aware training saves the model as integers with its learned scales "
                "(output/quantized), not as a merged float model")  # fmt: skip
    return (f"{method.title} cannot be merged into the model's weights: it adds virtual tokens or layers "
            "that a plain transformers model does not have")  # fmt: skip


def save_merged(model: Any, tokenizer: Any, folder: Path) -> None:
    """``model`` with its adapter folded into the weights (peft's merge, on a copy: the trained model
    stays as it is), or the whole trained model (freezing methods), saved for transformers alone."""
    from peft import PeftModel

    from core.finetune import qlora

    if isinstance(model, PeftModel) and qlora.is_quantized(model):
        model = qlora.merged_float_model(model)  # into the decoded 4-bit weights, kept in float32
    elif isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
