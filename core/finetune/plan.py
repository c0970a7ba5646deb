"""What a training run will cost, before Start: the method's trainable parameters on the loaded
model and the peak memory for the exact settings, with "fits / does not fit" for this machine.

``run(params, ctx) -> Plan`` applies the method to a copy of the model (peft and the freezing
methods decide what trains; counting them any other way would drift from what training does)
and measures that copy's shape; the copy is dropped at the end.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import QuantTuneError
from core.finetune import methods
from core.finetune.estimate import Estimate, ModelShape, available_memory, estimate
from core.jobs import JobContext


@dataclass(frozen=True)
class PlanParams:
    loaded: Any  # core.models.loading.LoadedModel
    method: methods.MethodSettings
    batch_size: int = 4
    max_length: int = 512
    checkpointing: bool = False
    task: str = "instruction"
    dataset: Path | None = None  # classification: the classes are read from it (the head counts too)
    columns: tuple[tuple[str, str], ...] = ()
    train: Any = None  # core.finetune.train.TrainParams: estimate the time too (a few seconds' probe)

    def validate(self) -> list[str]:
        problems = list(self.method.validate())
        if self.loaded is None:
            problems.append("load a model first")
        if self.batch_size < 1 or self.max_length < 8:
            problems.append("the batch size is at least 1 and the maximum length at least 8")
        return problems


@dataclass(frozen=True)
class Plan:
    trainable: methods.Trainable
    estimate: Estimate
    device: str
    time: Any = None  # core.finetune.estimate.TimeEstimate, when asked for


def _labels(params: PlanParams) -> list[str]:
    from core.data.formats import detect_shape, read_rows
    from core.finetune.classify import label_names

    if params.dataset is None:
        raise QuantTuneError("A classifier's size depends on its labels.", "Choose the dataset first.")
    table = read_rows(params.dataset)
    shape = detect_shape(table.columns, table.head(20))
    return label_names(table, shape.mapped(dict(params.columns)) if params.columns else shape)


def run(params: PlanParams, ctx: JobContext) -> Plan:
    ctx.stage("Applying the method to a copy of the model")
    qlora = params.method.method == "qlora"
    # QLoRA trains what LoRA trains; counted on the float copy, without quantizing it here
    method = dataclasses.replace(params.method, method="lora") if qlora else params.method
    if params.task == "classification":
        from core.finetune import classify
        from core.finetune.batches import pad_id_of

        pad_id = pad_id_of(params.loaded.tokenizer)
        model = classify.build_classifier(params.loaded.model, _labels(params), pad_id)
    else:
        model = copy.deepcopy(params.loaded.model)
    model = methods.apply(model, method)
    counts = methods.trainable(model)
    shape = ModelShape.of(model)
    if qlora:  # NF4 base: about half a byte per weight, plus the scales
        shape = ModelShape(**{**shape.__dict__, "weight_bytes": 0.56})
    del model
    timed, seq_len = None, params.max_length
    if params.train is not None:
        from core.finetune.estimate import time_estimate

        ctx.stage("Timing two steps on this machine")
        try:
            timed = time_estimate(params.train, ctx)
            seq_len = min(seq_len, timed.longest or seq_len)  # no batch is longer than the longest row
        except QuantTuneError:
            pass  # the data has problems (the method step lists them): the memory estimate still holds
    # activations counted at FP32 even under bf16 autocast: norms, softmax and the loss stay FP32
    device = str(params.loaded.device)
    memory = estimate(shape, params.batch_size, seq_len, checkpointing=params.checkpointing,
                      available=available_memory("cpu" if device == "cpu" else device))  # fmt: skip
    return Plan(counts, memory, device, timed)
