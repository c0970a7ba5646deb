"""The "ask the model" job: ``run(GenerateParams, ctx) -> str``, streaming text as it comes.

Each new piece of text is reported as a ``token`` event (``ctx.emit("token", text=piece)``);
the pieces joined give the returned answer. Cancel is honoured between two tokens.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from core.errors import Cancelled, InvalidSettings, QuantTuneError
from core.finetune.batches import pad_id_of
from core.jobs import JobContext
from core.models.loading import LoadedModel

MAX_NEW_TOKENS = 2048
GREEDY_NEUTRAL = {
    "temperature": 1.0, "top_p": 1.0, "top_k": 50, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
}  # fmt: skip


@dataclass(frozen=True)
class GenerateParams:
    loaded: LoadedModel = field(compare=False, repr=False)
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy: the same answer every time
    use_chat_template: bool = True

    def validate(self) -> list[str]:
        problems = []
        if self.loaded is None:
            problems.append("No model is loaded.")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            problems.append("The prompt is empty.")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            problems.append(f"The answer length must be 1 to {MAX_NEW_TOKENS} tokens.")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            problems.append("The temperature must be a number.")
        elif self.temperature < 0:
            problems.append("The temperature must be 0 (greedy) or more.")
        return problems


def run(params: GenerateParams, ctx: JobContext) -> str:
    import torch

    loaded = params.loaded
    inputs = _encode(params, loaded).to(loaded.device)
    _check_fits(inputs["input_ids"].shape[1], params.max_new_tokens, loaded)
    streamer = _make_streamer(loaded.tokenizer, ctx, params.max_new_tokens)
    ctx.stage("Generating")
    with torch.inference_mode(), warnings.catch_warnings():
        # generate() hands peft position ids that soft prompts ignore by design: nothing to act on
        warnings.filterwarnings("ignore", message="Position ids are not supported", category=UserWarning)
        loaded.model.generate(
            **inputs,
            **_sampling_kwargs(params, loaded),
            streamer=streamer,
            stopping_criteria=_cancel_criteria(ctx),
        )
    if ctx.cancelled:
        raise Cancelled()
    return streamer.text


def _encode(params: GenerateParams, loaded: LoadedModel):
    tokenizer = loaded.tokenizer
    if not (params.use_chat_template and getattr(tokenizer, "chat_template", None)):
        return tokenizer(params.prompt, return_tensors="pt")
    from jinja2 import TemplateError

    messages = [{"role": "user", "content": params.prompt}]
    try:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    except (TemplateError, ValueError) as exc:  # a template may demand a system turn, say
        raise QuantTuneError(
            f"The chat template of {loaded.card.name} failed on this prompt: {exc}",
            "Untick 'Use chat template' to send the prompt as plain text.",
        ) from exc


def _check_fits(prompt_tokens: int, max_new_tokens: int, loaded: LoadedModel) -> None:
    limit = loaded.card.context_length
    if limit and prompt_tokens + max_new_tokens > limit:
        raise InvalidSettings(
            [
                f"The prompt ({prompt_tokens} tokens) plus the answer ({max_new_tokens} tokens) exceed "
                f"the model's context of {limit} tokens; shorten the prompt or the answer."
            ]
        )


def _sampling_kwargs(params: GenerateParams, loaded: LoadedModel) -> dict:
    from transformers import GenerationConfig

    tokenizer = loaded.tokenizer
    greedy = params.temperature == 0
    # generate() fills every field left None from the model's own generation_config, which may
    # hold sampling defaults (do_sample, top_p, temperature). In greedy mode those are set to
    # their neutral values, so the answer is truly greedy and transformers has nothing to warn about.
    sampling = GREEDY_NEUTRAL if greedy else {"temperature": params.temperature}
    config = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=not greedy,
        # peft's soft prompts (prompt, prefix, P-tuning) garble every token after the first with the
        # key/value cache (peft issues 1391, 2123): without it each step recomputes, slower
        use_cache=not soft_prompted(loaded.model),
        eos_token_id=loaded.model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=pad_id_of(tokenizer),  # else generate() warns and falls back to EOS itself
        **sampling,
    )
    return {"generation_config": config}


def soft_prompted(model) -> bool:
    """A peft soft prompt (prompt tuning, P-tuning, prefix): with the key/value cache its answers
    garble after the first token (peft issues 1391, 2123), so such models generate without it (the
    Evaluate step's batches recompute every step: core.evaluate.generation)."""
    configs = getattr(model, "peft_config", None) or {}
    return any(getattr(config, "is_prompt_learning", False) for config in configs.values())


def _cancel_criteria(ctx: JobContext):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnCancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), ctx.cancelled, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnCancel()])


def _make_streamer(tokenizer, ctx: JobContext, total: int):
    from transformers.generation.streamers import BaseStreamer

    class TokenStreamer(BaseStreamer):
        """Decodes the answer so far after each token and emits only the new text.

        Decoding the whole answer (not token by token) keeps spaces and multi-byte characters
        right; text ending in U+FFFD is an incomplete UTF-8 character and waits for the next
        token. The first put() is the prompt, which is skipped.
        """

        def __init__(self) -> None:
            self.ids: list[int] = []
            self.text = ""
            self._prompt_seen = False

        def put(self, value) -> None:
            if not self._prompt_seen:
                self._prompt_seen = True
                return
            self.ids.extend(int(i) for i in value.reshape(-1).tolist())
            decoded = tokenizer.decode(self.ids, skip_special_tokens=True)
            if not decoded.endswith("\ufffd"):
                self._emit(decoded)
            if not ctx.cancelled:
                ctx.progress(len(self.ids), total, "Generating")

        def end(self) -> None:
            self._emit(tokenizer.decode(self.ids, skip_special_tokens=True))

        def _emit(self, decoded: str) -> None:
            # A later token may rewrite earlier text (rare); emit only what extends it.
            if decoded.startswith(self.text) and len(decoded) > len(self.text):
                piece = decoded[len(self.text) :]
                self.text = decoded
                ctx.emit("token", text=piece)

    return TokenStreamer()
