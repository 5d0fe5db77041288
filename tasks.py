"""llm-parity tasks. `inv --list` shows them, `inv --help TASK` explains one.

Exit codes: 0 pass / done, 1 verdict fail, 2 unusable input, 3 server failure."""
from invoke import Exit, task

from llm_parity import cli
from llm_parity.profiles import DEFAULT_PROFILE

DTYPE_HELP = "serving and reference dtype: float32, bfloat16 or float16 (default: the profile's)"
RUN_HELP = "name of the results folder under results/ (or LLM_PARITY_RESULTS)"
PROFILE_HELP = f"profile name in profiles/ or a path to a profile JSON (default {DEFAULT_PROFILE})"
MODEL_HELP = "local folder of the model (default: the profile's; the tiny profile builds its own)"
RESULTS_HELP = "results root folder (default results/)"


def _finish(call) -> None:
    try:
        code = call()
    except cli.StageFailed as failed:
        raise Exit(str(failed), code=failed.code) from None
    if code:
        raise Exit(code=code)


@task(help={"dtype": DTYPE_HELP, "run": RUN_HELP, "lang": "report language: zh (default) or en",
            "server_url": "query a vLLM server already running at this URL instead of starting one",
            "results": RESULTS_HELP})
def demo(c, dtype=None, run="demo", lang="zh", server_url=None, results=None):
    """Run the whole path on the embedded tiny model: build it, serve with vLLM, query, transformers reference, compare, report.

    Writes results/<run>/ and prints the verdict and the report's path. Exit 0 pass, 1 fail."""
    _finish(lambda: cli.demo(dtype=dtype, run=run, lang=lang, server_url=server_url, results=results))


@task(name="tiny-model")
def tiny_model(c):
    """Build (or reuse) the tiny Llama-3 model and print its folder."""
    from llm_parity.tiny_model import build_tiny_model

    print(build_tiny_model())


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "dtype": DTYPE_HELP, "model": MODEL_HELP,
            "server_url": "use a vLLM server already running at this URL instead of starting one",
            "results": RESULTS_HELP})
def target(c, profile=DEFAULT_PROFILE, run="run", dtype=None, model=None, server_url=None, results=None):
    """Target side: start `vllm serve` with the profile's flags, query the suite, write results/<run>/target/."""
    _finish(lambda: cli.target(profile=profile, run=run, dtype=dtype, model=model, server_url=server_url, results=results))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "dtype": DTYPE_HELP, "model": MODEL_HELP,
            "device": "torch device for transformers: cpu (default) or cuda", "results": RESULTS_HELP})
def reference(c, profile=DEFAULT_PROFILE, run="run", dtype=None, model=None, device="cpu", results=None):
    """Reference side: the same suite ids through transformers, write results/<run>/reference/."""
    _finish(lambda: cli.reference(profile=profile, run=run, dtype=dtype, model=model, device=device, results=results))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "lang": "report language: zh (default) or en",
            "results": RESULTS_HELP})
def compare(c, profile=DEFAULT_PROFILE, run="run", lang="zh", results=None):
    """Compare target and reference of results/<run>/, write report/compare.json and report.md. Exit 0 pass, 1 fail, 2 bad input."""
    _finish(lambda: cli.compare(profile=profile, run=run, lang=lang, results=results))


@task(help={"args": "extra pytest arguments, e.g. '-k compare -x'"})
def test(c, args=""):
    """Run the test suite (unit tests, then integration tests against a real vLLM server)."""
    c.run(f"python -m pytest {args}", pty=False)
