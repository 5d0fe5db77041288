"""The serving benchmark: a small sweep against the one real vLLM server, and its aggregation on
hand-made request records (no server) with known answers."""
import pytest

from llm_parity.bench import (RequestRecord, render_bench, run_bench, suite_prompts, summarize,
                              synthetic_prompts, total_requests)
from llm_parity.results import validate
from llm_parity.stats import percentile
from llm_parity.serve import free_port
from llm_parity.suite import load_suite_source, render_suite

pytestmark = pytest.mark.integration

OUTPUT_LEN = 8
CONCURRENCIES = (1, 2)
PER_LEVEL = 4


@pytest.fixture(scope="module")
def bench_doc(vllm_server, tiny_model_dir, demo_profile):
    suite = render_suite(load_suite_source(), tiny_model_dir, default_max_tokens=demo_profile.decoding["max_tokens"])
    return run_bench(vllm_server.url, vllm_server.spec.served_name, prompts=suite_prompts(suite),
                     output_len=OUTPUT_LEN, concurrencies=CONCURRENCIES, requests_per_level=PER_LEVEL,
                     api_key=vllm_server.spec.api_key, log=lambda message: None)


def test_every_request_succeeds_with_fixed_length_and_consistent_timing(bench_doc):
    assert [level["concurrency"] for level in bench_doc["levels"]] == list(CONCURRENCIES)
    for level in bench_doc["levels"]:
        assert level["summary"]["requests"] == level["summary"]["completed"] == PER_LEVEL
        assert level["summary"]["failed"] == 0
        for record in level["records"]:
            assert record["success"] and record["error"] is None
            assert record["output_tokens"] == OUTPUT_LEN
            assert 0 < record["ttft_s"] < record["latency_s"]
            assert len(record["itl_s"]) == OUTPUT_LEN - 1
            assert record["latency_s"] == pytest.approx(record["ttft_s"] + sum(record["itl_s"]))


def test_summaries_are_ordered_and_the_doc_validates(bench_doc):
    validate(bench_doc, "bench", "bench_doc")
    for level in bench_doc["levels"]:
        summary = level["summary"]
        assert summary["output_tokens"] == PER_LEVEL * OUTPUT_LEN
        assert summary["output_throughput"] == pytest.approx(summary["output_tokens"] / summary["duration_s"])
        for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
            stats = summary[metric]
            assert 0 < stats["median"] <= stats["p90"] <= stats["p99"], metric
    table = render_bench(bench_doc)
    assert table.count("\n| ") == 1 + len(CONCURRENCIES)  # header and one row per concurrency


def test_an_unreachable_server_gives_failed_records_not_an_exception():
    doc = run_bench(f"http://127.0.0.1:{free_port('127.0.0.1')}", "nothing", prompts=[[1, 2, 3]], output_len=4,
                    concurrencies=(2,), log=lambda message: None)
    validate(doc, "bench", "unreachable")
    summary = doc["levels"][0]["summary"]
    assert summary["failed"] == summary["requests"] == 4 and summary["completed"] == 0
    assert summary["ttft_ms"]["median"] is None and summary["output_throughput"] == 0
    assert all(not record["success"] and record["error"] for record in doc["levels"][0]["records"])


def done(ttft: float, itl: list[float], output_tokens: int) -> RequestRecord:
    """A successful record whose latency is TTFT plus its gaps, as the client measures it."""
    return RequestRecord(start_s=0.0, prompt_tokens=10, success=True, ttft_s=ttft, itl_s=itl,
                         latency_s=ttft + sum(itl), output_tokens=output_tokens)


HAND_MADE = [
    done(0.1, [0.1] * 4, 5),   # latency 0.5, TPOT 0.1
    done(0.2, [0.2] * 4, 5),   # latency 1.0, TPOT 0.2
    done(0.3, [], 1),          # one token: no TPOT, no ITL
]


def test_summary_of_known_records():
    summary = summarize(HAND_MADE, duration_s=2.0)
    assert (summary["requests"], summary["completed"], summary["failed"]) == (3, 3, 0)
    assert (summary["input_tokens"], summary["output_tokens"]) == (30, 11)
    assert summary["request_throughput"] == pytest.approx(1.5)
    assert summary["output_throughput"] == pytest.approx(5.5)
    assert summary["total_token_throughput"] == pytest.approx(20.5)
    assert summary["ttft_ms"] == pytest.approx({"mean": 200, "median": 200, "p90": 280, "p99": 298})
    assert summary["tpot_ms"] == pytest.approx({"mean": 150, "median": 150, "p90": 190, "p99": 199})
    assert summary["itl_ms"] == pytest.approx({"mean": 150, "median": 150, "p90": 200, "p99": 200})
    assert summary["e2el_ms"] == pytest.approx({"mean": 600, "median": 500, "p90": 900, "p99": 990})


def test_a_failed_request_is_counted_and_left_out_of_every_statistic():
    broken = RequestRecord(start_s=0.0, prompt_tokens=10, ttft_s=50.0, itl_s=[50.0], output_tokens=0,
                           error="ClientPayloadError: stream cut")
    with_failure = summarize([*HAND_MADE, broken], duration_s=2.0)
    without = summarize(HAND_MADE, duration_s=2.0)
    assert (with_failure["requests"], with_failure["completed"], with_failure["failed"]) == (4, 3, 1)
    for key in ("input_tokens", "output_tokens", "request_throughput", "output_throughput", "total_token_throughput",
                "ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        assert with_failure[key] == without[key], key


def test_nothing_to_measure_gives_null_statistics():
    summary = summarize([RequestRecord(start_s=0.0, prompt_tokens=3, error="HTTP 404")], duration_s=1.0)
    assert summary["failed"] == 1 and summary["output_throughput"] == 0
    assert all(value is None for value in summary["ttft_ms"].values())


def test_percentile_interpolates_linearly_like_numpy():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0


def test_synthetic_prompts_are_seeded_and_sized():
    prompts = synthetic_prompts(3, 16, vocab_size=1000, seed=1)
    assert prompts == synthetic_prompts(3, 16, vocab_size=1000, seed=1)
    assert prompts != synthetic_prompts(3, 16, vocab_size=1000, seed=2)
    assert [len(prompt) for prompt in prompts] == [16] * 3
    assert all(0 <= token < 1000 for prompt in prompts for token in prompt)
    assert total_requests((1, 2), 4) == 10 and total_requests((1, 8)) == 4 + 1 + 16 + 1


def test_bench_task_writes_bench_json_and_the_report_shows_it(demo_run, vllm_server, tmp_path, capsys):
    import shutil

    from llm_parity import cli, pipeline
    from llm_parity.profiles import load_profile
    from llm_parity.results import RunDir, read_json

    shutil.copytree(demo_run.root, tmp_path / "demo")
    code = cli.bench(profile="tiny-llama", run="demo", server_url=vllm_server.url, concurrencies="1,2",
                     output_len=OUTPUT_LEN, requests_per_level=PER_LEVEL, results=str(tmp_path))
    assert code == 0 and "| 2 |" in capsys.readouterr().out
    run = RunDir(tmp_path / "demo")
    assert [level["concurrency"] for level in read_json(run.bench, "bench")["levels"]] == [1, 2]
    pipeline.compare(run, load_profile("tiny-llama"), lang="en")
    assert "## Serving performance" in run.report_md.read_text()
    page = run.report_html.read_text()
    assert "Output throughput per concurrency" in page and page.count("<svg") == 6  # and the demo's five
