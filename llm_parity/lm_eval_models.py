"""lm-evaluation-harness's two models as the accuracy stage drives them, each keeping the token ids
it really fed its model for every request, so the two sides can be shown to have scored the same
thing (lm-eval's own per-sample logs keep the text, not the ids). Imported only by the accuracy
stage: compare, report and audit never need lm-eval."""
from __future__ import annotations

import transformers
from lm_eval.models.huggingface import HFLM
from lm_eval.models.openai_completions import LocalCompletionsAPI

FedIds = dict[tuple[str, ...], list[int]]  # (context, continuation) or (context,) -> ids


class RecordsFedIds:
    """Mixin: `fed_ids` maps a loglikelihood request (context, continuation) to the ids scored,
    and a generation request (context,) to the prompt ids generated from."""

    fed_ids: FedIds

    def _loglikelihood_tokens(self, requests, **kwargs):
        for (context, continuation), context_ids, continuation_ids in requests:
            self.fed_ids[(context, continuation)] = [*context_ids, *continuation_ids]
        return super()._loglikelihood_tokens(requests, **kwargs)


class RecordingHF(RecordsFedIds, HFLM):
    """lm-eval's `hf` backend (transformers), the reference side."""

    def __init__(self, **kwargs):
        self.fed_ids = {}
        super().__init__(**kwargs)

    def tok_batch_encode(self, strings, **kwargs):
        # Only generate_until encodes in batches here; the padding is on the left.
        ids, mask = super().tok_batch_encode(strings, **kwargs)
        for string, row, keep in zip(strings, ids.tolist(), mask.tolist()):
            self.fed_ids[(string,)] = [token for token, kept in zip(row, keep) if kept]
        return ids, mask


class RecordingCompletions(RecordsFedIds, LocalCompletionsAPI):
    """lm-eval's `local-completions` model sending token ids to the served model, the target side."""

    def __init__(self, *, api_key: str | None = None, **kwargs):
        self.fed_ids = {}
        self._key = api_key or ""
        super().__init__(**kwargs)
        # lm-eval loads this tokenizer without `add_bos_token`, unlike its hf backend; a tokenizer
        # whose post-processor adds no BOS (Llama-3's tokenizer.json alone) would then score
        # without one while the reference scores with it. Load it the way the hf backend does.
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            kwargs["tokenizer"], add_bos_token=bool(kwargs.get("add_bos_token")))

    @property
    def api_key(self) -> str:
        return self._key

    def tok_encode(self, string, **kwargs):
        ids = super().tok_encode(string, **kwargs)
        if not isinstance(string, str):  # generate_until encodes its contexts as one batch
            for context, row in zip(string, ids):
                self.fed_ids[(context,)] = list(row)
        return ids
