"""llm-parity tasks. `inv --list` shows them, `inv --help TASK` explains one.

Exit codes: 0 pass / done, 1 verdict fail, 2 unusable input, 3 server failure."""
import functools
import inspect
import sys

from invoke import Exit, task

from llm_parity import cli
from llm_parity.accuracy import project_tasks
from llm_parity.profiles import DEFAULT_PROFILE, DEMO_PROFILE

DTYPE_HELP = "serving and reference dtype: float32, bfloat16 or float16 (default: the profile's)"
RUN_HELP = "name of the results folder under results/ (or LLM_PARITY_RESULTS)"
PROFILE_HELP = f"profile name in profiles/ or a path to a profile JSON (default {DEFAULT_PROFILE})"
RESULTS_HELP = "results root folder (default results/)"
# The options every side task takes, and those of the tasks that serve: declared once, here.
SIDE_OPTIONS = {
    "profile": (DEFAULT_PROFILE, PROFILE_HELP),
    "run": ("run", RUN_HELP),
    "dtype": (None, DTYPE_HELP),
    "model": (None, "local folder of the model (default: the profile's; downloaded into models/ for a Hub source)"),
    "results": (None, RESULTS_HELP),
    "suite": (None, "prompt suite: a suite JSON (suites/*.json) or JSONL, one {\"id\": ..., \"messages\": [...]} chat "
                    "request per line (default suites/default-ko.json); used when the run's suite.json is first written"),
    "limit": (None, "a quick subset: only the first N prompts of the suite"),
}
SERVE_OPTIONS = {
    "max_model_len": (None, "vllm serve --max-model-len (default: the profile's; seed 8192)"),
    "max_num_seqs": (None, "vllm serve --max-num-seqs, also the query concurrency (seed 16)"),
    "port": (None, "vllm serve --port (seed 8000; 0 picks a free port)"),
    "tensor_parallel_size": (None, "vllm serve --tensor-parallel-size (seed 1)"),
    "enforce_eager": (False, "turn graph capture off (ACL graph on Ascend); the report says which mode ran"),
}
# How the reference spreads over processes and devices (cli.placement_of).
PLACEMENT_OPTIONS = {
    "processes": (1, "data parallel: N reference processes (accelerate launch), each a copy of the model running every "
                     "N-th batch (one GPU each with --device cuda); their records equal one process's byte for byte at "
                     "the same --batch-size and OMP_NUM_THREADS"),
    "batch_size": (None, "sequences per reference batch (default: as many as the free memory holds)"),
    "device_map": (None, "one model over several devices, for a model larger than one GPU: auto (or balanced, "
                         "balanced_low_0, sequential) fills the GPUs, then the CPU, then --offload-folder on disk"),
    "max_memory": (None, "with --device-map: the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB (a small "
                         "GPU share offloads layers to the CPU)"),
    "offload_folder": (None, "with --device-map: folder for the layers that fit on no device (disk offload)"),
}
SERVER_URL_HELP = "use a vLLM server already running at this URL instead of starting one"


def _finish(call) -> None:
    try:
        code = call()
    except cli.StageFailed as failed:
        raise Exit(str(failed), code=failed.code) from None
    if code:
        raise Exit(code=code)


def _serve(max_model_len, max_num_seqs, port, tensor_parallel_size, enforce_eager) -> dict:
    """Serve overrides from the command line (invoke passes options without a default as strings)."""
    numbers = {"max_model_len": max_model_len, "max_num_seqs": max_num_seqs, "port": port,
               "tensor_parallel_size": tensor_parallel_size}
    return {**{name: None if value is None else int(value) for name, value in numbers.items()},
            "enforce_eager": enforce_eager or None}


def side_task(*, serve: bool = False, placement: bool = False, **task_options):
    """An invoke task that takes the side options (and, with `serve`, the serve options; with
    `placement`, the reference's placement options) on top of its own. The body is called as
    `body(c, side, **own_options)`, where `side` holds the side options as keyword arguments for
    cli, the serve overrides under "serve", the placement options under "placement"."""
    declared = {**SIDE_OPTIONS, **(SERVE_OPTIONS if serve else {}), **(PLACEMENT_OPTIONS if placement else {})}

    def decorate(body):
        own = list(inspect.signature(body).parameters.values())
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
                 for name, (default, _) in declared.items()]

        @functools.wraps(body)
        def wrapper(c, **options):
            side = {name: options.pop(name) for name in SIDE_OPTIONS}
            if serve:
                side["serve"] = _serve(**{name: options.pop(name) for name in SERVE_OPTIONS})
            if placement:
                side["placement"] = {name: options.pop(name) for name in PLACEMENT_OPTIONS}
            return body(c, side, **options)

        wrapper.__signature__ = inspect.Signature([own[0], *added, *own[2:]])
        helps = {name: text for name, (_, text) in declared.items()} | task_options.pop("help", {})
        return task(help=helps, **task_options)(wrapper)
    return decorate


@task(help={"dtype": DTYPE_HELP, "run": RUN_HELP, "lang": "report language: zh (default) or en",
            "server_url": SERVER_URL_HELP, "results": RESULTS_HELP, "suite": SIDE_OPTIONS["suite"][1],
            "limit": SIDE_OPTIONS["limit"][1],
            "profile": "a tiny model's profile: tiny-llama (default) or tiny-llama-split, trained less, whose answers "
                       "split in bfloat16"})
def demo(c, dtype=None, run="demo", lang="zh", server_url=None, results=None, suite=None, limit=None, profile=DEMO_PROFILE):
    """Run the whole path on the embedded tiny model: build it, serve with vLLM, query, transformers reference, compare, report.

    Writes results/<run>/ and prints the verdict and the report's path. Exit 0 pass, 1 fail."""
    _finish(lambda: cli.demo(dtype=dtype, run=run, lang=lang, server_url=server_url, results=results, suite=suite,
                             limit=limit, profile=profile))


@task(name="tiny-model")
def tiny_model(c):
    """Build (or reuse) the tiny Llama-3 model; print its folder and its smallest greedy top-1/top-2 margin over the suite."""
    _finish(cli.tiny_model)


@side_task()
def download(c, side):
    """Fetch the profile's model at its pinned revision into models/ and write results/<run>/model/manifest.json.

    Source hf honours HF_ENDPOINT and HF_TOKEN and resolves a branch name to its commit once; source modelscope
    honours MODELSCOPE_ENDPOINT and MODELSCOPE_API_TOKEN (ModelScope names no commit: the report flags the revision).
    The manifest records the revisions and every file's size and sha256.
    Pickle weights (.bin/.pt) are refused unless the profile allows them."""
    _finish(lambda: cli.download(**side))


@task(name="check-model", help={"model": "model folder to re-hash", "manifest": "manifest.json to check it against"})
def check_model(c, model, manifest):
    """Re-hash a model folder against a manifest; exit 1 naming every changed, missing or extra file."""
    _finish(lambda: cli.check_model(model=model, manifest=manifest))


@side_task(serve=True)
def dummy(c, side):
    """Dummy-weights check: config and tokenizer only, `vllm serve --load-format dummy`, one request; writes target/dummy.json.

    Shows the architecture parses, graphs compile, the KV cache is allocated and the server answers. Exit 1 if not."""
    _finish(lambda: cli.dummy(**side))


@side_task(serve=True, help={"server_url": SERVER_URL_HELP,
                             "resume": "keep the prompts that finished in an earlier run of this side and query only the rest"})
def target(c, side, server_url=None, resume=False):
    """Target side: start `vllm serve` with the profile's flags, query the suite, write results/<run>/target/.

    The server binds 127.0.0.1 unless the profile says otherwise; with LLM_PARITY_API_KEY set it requires that key
    and the client sends it. Exit 1 when some prompts failed (they are recorded; --resume reruns only those),
    3 when the server did not start, 130 when interrupted (what finished is written)."""
    _finish(lambda: cli.target(**side, server_url=server_url, resume=resume))


@side_task(serve=True)
def serve(c, side):
    """Serve the profile's model the way the target side does (its flags, 127.0.0.1, LLM_PARITY_API_KEY), for another client.

    Prints the URL and the served model name, then runs until Ctrl-C, which stops the server and its workers (exit 0).
    Point lm-eval, curl or a load test at the URL; the --run, --suite and --limit options are not used here."""
    _finish(lambda: cli.serve(**side))


@side_task(serve=True)
def verify(c, side):
    """What `make verify` runs in the Ascend image: preflight, download, dummy check, serve, query (the target side).

    The preflight (where vllm-ascend is installed) checks that torch_npu sees an NPU and that bishengir-compile is on
    PATH, and exits 3 before downloading anything when either fails."""
    _finish(lambda: cli.verify(**side))


@side_task(serve=True, help={
    "server_url": "benchmark a vLLM server already running at this URL",
    "concurrencies": "comma-separated sweep (default 1,2,4,8,16)", "output_len": "output tokens per request (default 64, EOS ignored)",
    "input_len": "synthetic prompts of this many tokens instead of the suite's prompts",
    "requests_per_level": "requests at each concurrency (default 2 x concurrency, at least 4)"})
def bench(c, side, server_url=None, concurrencies="1,2,4,8,16", output_len=64, input_len=None, requests_per_level=None):
    """Serving benchmark like `vllm bench serve`: TTFT, TPOT, ITL, end-to-end latency (mean, median, p90, p99) and throughput per concurrency.

    Streams greedy completions with fixed lengths; writes results/<run>/target/bench.json and prints a table; the report shows it."""
    _finish(lambda: cli.bench(**side, server_url=server_url, concurrencies=concurrencies, output_len=int(output_len),
                              input_len=int(input_len) if input_len else None,
                              requests_per_level=int(requests_per_level) if requests_per_level else None))


@side_task(help={"lang": "report language: zh (default) or en",
                 "variants": "comma-separated variant names to run now (default: all of the profile's); the others keep "
                             "what they had", "device": "torch device for the reference: cpu (default) or cuda",
                 "no_reference": "do not run the reference side when the run has none (an Ascend host: the reference "
                                 "comes from a CPU/GPU host, then make compare)"})
def matrix(c, side, lang="zh", variants=None, device="cpu", no_reference=False):
    """Configuration matrix: serve the model once per variant (base, eager, tp2, concurrency-1, no-prefix-cache, no-chunked-prefill, repeat, or the profile's `variants`), compare each with the reference and with base.

    The reference runs once (kept when the run has one); base is target/, the others variants/<name>/, each with its
    provenance. Writes report/matrix.json and adds the matrix to report.md and report.html. A variant whose server does
    not start is recorded as such and the matrix goes on. Exit 0 when every variant that ran passes, 1 otherwise."""
    _finish(lambda: cli.matrix(**side, lang=lang, variants=variants, device=device, with_reference=not no_reference))


@side_task(placement=True, help={"device": "torch device for transformers: cpu (default) or cuda",
                                 "resume": "keep the prompts and passages that finished in an earlier run of this side "
                                           "and run only the rest"})
def reference(c, side, device="cpu", resume=False):
    """Reference side: the same suite ids through transformers, write results/<run>/reference/.

    Each record is appended to reference/generations.records and perplexity.records as it finishes, so a run that is
    stopped or killed keeps what finished and --resume runs only the rest. When the target side has run already, the
    reference also scores the target's answers (teacher forcing): reference/teacher-forced.records. For many prompts,
    --processes N runs N copies of the model (accelerate launch), each on its share of the batches; for a model larger
    than one GPU, --device-map auto spreads its layers over the GPUs, the CPU (--max-memory) and disk
    (--offload-folder). Provenance records processes, threads and devices."""
    _finish(lambda: cli.reference(**side, device=device, resume=resume))


@task(help={"tasks": f"comma-separated lm-eval task names: the project's own ({','.join(project_tasks())}, the default) "
                     "or lm-eval's (kobest_boolq, kmmlu, ...; their data sets come through HF_ENDPOINT)",
            "side": "target (lm-eval's local-completions against the served model), reference (its hf backend in "
                    "transformers) or both (default)",
            "limit": "only the first N documents of each task", "num_fewshot": "few-shot examples (default: each task's)",
            "profile": PROFILE_HELP, "run": RUN_HELP, "dtype": DTYPE_HELP, "model": SIDE_OPTIONS["model"][1],
            "results": RESULTS_HELP, "server_url": SERVER_URL_HELP, "device": "torch device of the reference: cpu or cuda",
            "lang": "report language: zh (default) or en"})
def accuracy(c, tasks=",".join(project_tasks()), side="both", limit=None, num_fewshot=None, profile=DEFAULT_PROFILE,
             run="run", dtype=None, model=None, results=None, server_url=None, device="cpu", lang="zh"):
    """Benchmark accuracy through lm-evaluation-harness on both sides: same tasks, few-shot, limit, BOS and context length.

    Writes <side>/accuracy.json and per-sample files <side>/accuracy/<task>.json; once the run holds both sides'
    generations and accuracy, compares them (per task: both accuracies, difference with a paired bootstrap CI, flips
    with an exact McNemar test, answer agreement, |Δ loglikelihood|) into the report. Exit 0 pass, 1 fail, 2 when the
    sides did not score the same thing (BOS, tokens, documents)."""
    _finish(lambda: cli.accuracy(tasks=tasks, side=side, limit=limit, num_fewshot=num_fewshot, lang=lang, profile=profile,
                                 run=run, dtype=dtype, model=model, results=results, server_url=server_url, device=device))


@side_task(serve=True, help={
    "side": "target (a vLLM server in raw_logits mode: started now, or --server-url of one) or reference",
    "server_url": SERVER_URL_HELP + "; it must run with --logprobs-mode raw_logits --max-logprobs -1",
    "device": "torch device for the reference: cpu (default) or cuda"})
def logits(c, options, side="reference", server_url=None, device="cpu"):
    """Opt-in logits mode: a side's full-vocabulary logits at the first profile logits.positions positions of each passage.

    Writes results/<run>/<side>/logits.f32 (float32 rows) and logits.json (which names and hashes it). The target
    starts its own server with --logprobs-mode raw_logits --max-logprobs -1 (the mode is server-wide, so not the
    run's server). With both sides stored, compare fills the report's logits row (max |Δ logit|, cosine, exact KL)."""
    _finish(lambda: cli.logits(**options, side=side, server_url=server_url, device=device))


@side_task(serve=True, placement=True, name="cross-score", help={
    "scorer": "the side that scores the other side's answers: reference (default) or target",
    "server_url": SERVER_URL_HELP, "device": "torch device for the reference: cpu (default) or cuda"})
def cross_score(c, side, scorer="reference", server_url=None, device="cpu"):
    """Teacher forcing for the side that ran first: it scores the answers of the side that ran after it.

    The side that runs second scores the first one's answers by itself; this completes the pair, writing
    results/<run>/<side>/teacher-forced.records (each answer token's logprob and the top-k at its position, from one
    pass over prompt + answer). Cheapest order: reference, target, then cross-score --scorer reference."""
    _finish(lambda: cli.cross_score(**side, scorer=scorer, server_url=server_url, device=device))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "lang": "report language: zh (default) or en",
            "results": RESULTS_HELP,
            "profile_override": "judge with this profile although the sides ran another (the report says so)"})
def compare(c, profile=DEFAULT_PROFILE, run="run", lang="zh", results=None, profile_override=False):
    """Compare target and reference of results/<run>/, write report/compare.json, report.md and report.html. Exit 0 pass, 1 fail, 2 bad input.

    The sides record the profile they ran (name and content hash); another one is refused unless --profile-override."""
    _finish(lambda: cli.compare(profile=profile, run=run, lang=lang, results=results, profile_override=profile_override))


@task(help={"run": "a run name under results/, or the path of any results folder", "results": RESULTS_HELP})
def audit(c, run="run", results=None):
    """Re-check a results folder from its files alone: schemas, SHA256SUMS, same suite/model/decoding on both sides, and the verdict recomputed from the raw records. Exit 0 only if all hold."""
    _finish(lambda: cli.audit(run=run, results=results))


@task(help={"run": "a run name under results/, or the path of any results folder",
            "side": "the side to run again: reference or target",
            "model": "local folder of the model (default: fetched at the manifest's revision, or the profile's own); "
                     "its files must match model/manifest.json",
            "dtype": "override the recorded dtype (reported as an override; the records are still held to the "
                     "recorded dtype's thresholds)",
            "profile": "profile name or file, only for a folder whose provenance does not hold the profile it ran; "
                       "it must have the recorded sha256",
            "device": "torch device for a reference replay: cpu (default) or cuda",
            "results": RESULTS_HELP, "lang": "language of the report it rewrites: zh (default) or en"})
def replay(c, run="run", side="reference", model=None, dtype=None, profile=None, device="cpu", results=None, lang="zh"):
    """Run one side of a results folder again from the folder's own records and compare with the stored records. Exit 0 reproduced, 1 not.

    Takes the rendered suite, the model manifest, and the profile, dtype, serve flags and environment the side recorded;
    checks the folder's SHA256SUMS and every model file before anything runs; writes replay/<side>/ and report/replay.json
    (byte-identical, within thresholds, or not reproducible naming the first differing prompt and token, with every
    difference in versions or hardware), the report's replay section, and SHA256SUMS again."""
    _finish(lambda: cli.replay(run=run, side=side, model=model, dtype=dtype, profile=profile, device=device,
                               results=results, lang=lang))


@task(help={"model": "a model folder, its config.json, or a Hub id (fetches config.json only)",
            "dtype": "weights and KV cache dtype (default bfloat16)", "max_model_len": "default 8192 (seed)",
            "max_num_seqs": "default 16 (seed)", "card_gib": "memory per card in GiB (default 64: Ascend 910B)",
            "gpu_memory_utilization": "share of the card vLLM may use (default 0.9, vLLM's)",
            "out": "also write the plan as JSON (schemas/plan.schema.json) to this path"})
def plan(c, model, dtype="bfloat16", max_model_len=8192, max_num_seqs=16, card_gib=64.0, gpu_memory_utilization=0.9, out=None):
    """Memory a deployment needs from config.json alone: weights, KV cache per token and at max-model-len x max-num-seqs, per card for TP=1 and TP=2, and whether it fits."""
    _finish(lambda: cli.plan(model=model, dtype=dtype, max_model_len=int(max_model_len), max_num_seqs=int(max_num_seqs),
                             card_gib=float(card_gib), gpu_memory_utilization=float(gpu_memory_utilization), out=out))


@task(name="image-base", help={"tag": "base image tag as written in images.lock.json",
                                "allow_unpinned": "accept a tag with no digest (the image then records it was unpinned)",
                                "mirror": "pull through this registry prefix (e.g. a mirror that serves quay.io under a path); the digest is kept"})
def image_base(c, tag, allow_unpinned=False, mirror=None):
    """Print `REFERENCE PINNED` for a base image: tag@digest and 1 from the lock, or the bare tag and 0 with --allow-unpinned."""
    _finish(lambda: cli.image_base(tag, allow_unpinned=allow_unpinned, mirror=mirror))


@task(help={"tag": "base image tag to resolve; repeatable", "all_missing": "resolve every tag whose digest is missing"},
      iterable=["tag"])
def pin(c, tag=None, all_missing=False):
    """Resolve base image digests from the registry (needs docker and registry access) and write them into images.lock.json."""
    from llm_parity.images import load_lock, record_digest

    tags = list(tag or [])
    if all_missing:
        tags += [name for name, entry in load_lock()["images"].items() if not entry["digest"]]
    for name in tags:
        out = c.run(f"docker buildx imagetools inspect {name} --format '{{{{json .Manifest.Digest}}}}'", hide=True)
        digest = out.stdout.strip().strip('"')
        record_digest(name, digest)
        print(f"pinned {name}@{digest}")


@task(help={"args": "extra pytest arguments, e.g. '-k compare -x'"})
def test(c, args=""):
    """Run the test suite (unit tests, then integration tests against a real vLLM server)."""
    c.run(f"{sys.executable} -m pytest {args}", pty=False)
