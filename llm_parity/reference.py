"""The reference side: the suite through Hugging Face transformers on CPU or CUDA, from exactly
the same prompt ids as the target, greedy, with per-token logprobs by log_softmax in float32."""
from __future__ import annotations

from pathlib import Path

from llm_parity.progress import note
from llm_parity.records import failed_generation, failed_perplexity, perplexity_of, sort_top_k

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class TransformersRunner:
    """A causal LM loaded once; `generate` and `perplexity` give the same records as the target.

    Use as a context manager to free the model on exit."""

    def __init__(self, model_dir: Path, *, dtype: str, device: str = "cpu", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.torch = torch
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, DTYPES[dtype]), trust_remote_code=trust_remote_code,
            use_safetensors=True,
        ).to(device)
        self.model.eval()
        self.stop_ids = self._stop_ids(GenerationConfig.from_pretrained(model_dir), self.model.config)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    @staticmethod
    def _stop_ids(*configs) -> set[int]:
        stop: set[int] = set()
        for config in configs:
            eos = getattr(config, "eos_token_id", None)
            stop.update([eos] if isinstance(eos, int) else (eos or []))
        return stop

    def __enter__(self) -> "TransformersRunner":
        return self

    def __exit__(self, *exc) -> None:
        del self.model

    def _log_softmax_last(self, logits):
        return self.torch.log_softmax(logits[0, -1].float(), dim=-1)

    def generate(self, prompt: dict, *, top_logprobs: int) -> dict:
        """Greedy decoding with the KV cache, one token at a time, stopping at an EOS id."""
        torch = self.torch
        output_ids, logprobs, top = [], [], []
        finish_reason = "length"
        with torch.inference_mode():
            input_ids = torch.tensor([prompt["prompt_ids"]], device=self.device)
            out = self.model(input_ids=input_ids, use_cache=True)
            for _ in range(prompt["max_tokens"]):
                scores = self._log_softmax_last(out.logits)
                values, indices = torch.topk(scores, top_logprobs)
                token = int(torch.argmax(scores))
                output_ids.append(token)
                logprobs.append(float(scores[token]))
                top.append(sort_top_k(zip(indices.tolist(), values.tolist()), top_logprobs))
                if token in self.stop_ids:
                    finish_reason = "stop"
                    break
                out = self.model(input_ids=torch.tensor([[token]], device=self.device),
                                 past_key_values=out.past_key_values, use_cache=True)
        return {
            "id": prompt["id"],
            "prompt_ids": list(prompt["prompt_ids"]),
            "output_ids": output_ids,
            "text": self.tokenizer.decode(output_ids, skip_special_tokens=True),
            "logprobs": logprobs,
            "top_logprobs": top,
            "finish_reason": finish_reason,
            "usage": {"prompt_tokens": len(prompt["prompt_ids"]), "completion_tokens": len(output_ids)},
            "error": None,
        }

    def perplexity(self, passage: dict) -> dict:
        """One forward pass over the passage; logprob of each token given the ones before it."""
        torch = self.torch
        with torch.inference_mode():
            ids = torch.tensor([passage["ids"]], device=self.device)
            scores = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            chosen = scores.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1).tolist()
        return {"id": passage["id"], "logprobs": chosen, "perplexity": perplexity_of(chosen), "error": None}


def run_reference(runner: TransformersRunner, suite: dict, *, top_logprobs: int, log=note) -> tuple[list[dict], list[dict]]:
    """Every prompt and passage of the suite; a failure becomes that item's error record."""
    generations = []
    for index, prompt in enumerate(suite["prompts"], start=1):
        try:
            generations.append(runner.generate(prompt, top_logprobs=top_logprobs))
        except (RuntimeError, ValueError, IndexError) as err:
            generations.append(failed_generation(prompt, f"{type(err).__name__}: {err}"))
        log(f"reference: {index}/{len(suite['prompts'])} {prompt['id']}")
    perplexity = []
    for passage in suite["passages"]:
        try:
            perplexity.append(runner.perplexity(passage))
        except (RuntimeError, ValueError, IndexError) as err:
            perplexity.append(failed_perplexity(passage, f"{type(err).__name__}: {err}"))
    log(f"reference: perplexity of {len(suite['passages'])} passages")
    return generations, perplexity
