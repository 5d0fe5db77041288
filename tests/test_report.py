"""Report sections from hand-made records: honest statements, flags, both languages; a run of 2,000
prompts whose report stays the size of a run of 200."""
import html
import time
from collections import Counter

import numpy as np
import pytest
from test_compare import EOS, LOOSE, compare_many, compare_one, record, split_pair

from llm_parity.compare import decade_counts
from llm_parity.report import INLINE_ITEMS, build_report, joined_cells, shorten_lists
from llm_parity.report.html import html_pages
from llm_parity.report.markdown import cell, markdown_pages, render_markdown
from llm_parity.report.strings import STRINGS

PROVENANCE = {side: {"backend": backend, "device": "cpu", "packages": {"torch": "2.13.0"}, "notes": [],
                     "hardware": {"cpu": "test cpu", "accelerator": None},
                     "image": {"reference": "quay.io/ascend/vllm-ascend:v0.18.0", "digest": None, "pinned": False}}
              for side, backend in (("target", "vllm-http"), ("reference", "transformers"))}
MANIFEST = {"repo_id": "ShanXi/KoLlama-3-8B-Instruct", "source": "hf", "revision": "main", "resolved_revision": "c" * 40}


def test_near_tie_split_is_explained_not_a_bare_cross():
    target, reference = split_pair(runner_up_in_top_k=True)
    text = render_markdown(build_report(compare_one(target, reference, LOOSE), PROVENANCE, manifest=MANIFEST, lang="en"))
    assert "⚠️ split within top-k" in text and "position 1: 7 vs 8" in text
    assert "within the logprob noise this dtype allows" in text


def test_moving_branch_and_unpinned_image_are_flagged():
    text = render_markdown(build_report(compare_one(record([5]), record([5])), PROVENANCE, manifest=MANIFEST, lang="en"))
    assert f"ShanXi/KoLlama-3-8B-Instruct@{'c' * 40} ⚠️ asked for the branch main" in text
    assert "not pinned by digest" in text
    pinned = {**MANIFEST, "revision": "c" * 40}
    assert "⚠️ asked" not in render_markdown(build_report(compare_one(record([5]), record([5])), PROVENANCE,
                                                         manifest=pinned, lang="en"))


def test_a_revision_without_a_commit_is_flagged_and_a_local_folder_is_not():
    def revision_line(manifest: dict, lang: str = "en") -> str:
        text = render_markdown(build_report(compare_one(record([5]), record([5])), PROVENANCE, manifest=manifest,
                                            lang=lang))
        return next(line for line in text.splitlines() if manifest["repo_id"] in line)

    modelscope = {**MANIFEST, "source": "modelscope", "revision": "master", "resolved_revision": None}
    assert "ShanXi/KoLlama-3-8B-Instruct@master (modelscope) ⚠️ master was not resolved to a commit" \
        in revision_line(modelscope)
    assert "sha256" in revision_line(modelscope, "zh")
    default_branch = {**modelscope, "revision": None}
    assert "@the default branch (modelscope) ⚠️ the default branch was not resolved" in revision_line(default_branch)
    local = {**MANIFEST, "source": "local", "revision": None, "resolved_revision": None}
    assert "⚠️" not in revision_line(local)


def test_both_languages_render_every_section():
    compare = compare_one(record([5]), record([5]))
    zh = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST))
    en = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en"))
    assert "## 验证项" in zh and "## 精度指标" in zh and "✅ 通过" in zh
    assert "## Validation items" in en and "## Precision metrics" in en and "✅ pass" in en


def test_a_check_that_could_not_run_is_shown_as_not_checked_in_both_languages():
    compare = compare_one(record([5]), record([5]))  # no chat_prompt_ids: the template was not checked
    en = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en"))
    zh = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST))
    row = next(line for line in en.splitlines() if line.startswith("| server chat template renders the same ids"))
    assert "⚪ not checked" in row and "✅" not in row and "❌" not in row
    assert "Not checked (server chat template renders the same ids, logits difference (max" in en
    row = next(line for line in zh.splitlines() if line.startswith("| 服务端对话模板一致"))
    assert "⚪ 未检查" in row and "✅" not in row and "❌" not in row


def test_perplexity_not_checked_in_the_precision_table():
    compare = compare_many([record([5])], [record([5])], passages=())
    en = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en"))
    rows = [line for line in en.splitlines() if line.startswith("| perplexity relative difference")]
    assert len(rows) == 2 and all("⚪ not checked" in row for row in rows)


def test_teacher_forced_section_gives_the_run_summary_per_prompt_and_the_bound():
    from test_compare import sharper

    from llm_parity.report.html import render_html
    from llm_parity.report.overview import decade_histogram

    compare = compare_one(record([5, 6]), record([5, 6]), forced=sharper)
    report = build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en")
    en = render_markdown(report)
    assert "## Past the split: distributions under teacher forcing" in en
    row = next(line for line in en.splitlines() if line.startswith("| p1 | 2 |"))
    assert "100 %" in row  # same top-1 at both positions
    assert "mean KLD 1.18 ± 0" in en and "99.9 %: 1.18" in en and "a lower bound on the full-vocabulary KL" in en
    assert "表 KL 的下界" in render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST))
    assert "Distribution of the KLD per position" in render_html(report, compare)
    assert decade_histogram([Counter({-12: 2, -3: 2, -1: 1}), Counter({-11: 1})]) == (
        ["≤1e-12"] + [f"1e{d}" for d in range(-11, 0)], [[2] + [0] * 8 + [2, 0, 1], [0, 1] + [0] * 10])
    # compare counts the KLD per position by decade the way the report counts per-prompt values
    assert decade_counts(np.array([0.0, 3e-13, 2e-3, 5e-3, 0.5, 1e-11])) == {"-12": 2, "-11": 1, "-3": 2, "-1": 1}
    assert compare["summary"]["teacher_forced"]["kld_decades"] == {"0": 2}  # 1.18 at both positions


def test_without_teacher_forcing_the_report_says_what_is_missing():
    compare = compare_one(record([5]), record([5]), forced=None)
    en = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en"))
    assert "No teacher-forced scores: the reference has not scored the target's answers" in en


IDS = [5, 6, 7, EOS]
NARROW = "p0077"  # passes, with the smallest top-1/top-2 margin of the run
# Prompts that fail a check, each in its own way, and what the English report says of each.
BROKEN = {
    "p0011": ("split outside top-k", lambda rid: split_pair(False, rid)),
    "p0022": ("error: target: server said no", lambda rid: (record([], error="server said no", rid=rid), record(IDS, rid=rid))),
    "p0033": ("token accounting: target: usage.completion_tokens 9 != 4 output ids",
              lambda rid: (record(IDS, usage={"prompt_tokens": 3, "completion_tokens": 9}, rid=rid), record(IDS, rid=rid))),
    "p0044": ("text differs despite equal ids", lambda rid: (record(IDS, text="<script>alert(1)</script>", rid=rid),
                                                            record(IDS, rid=rid))),
    "p0055": ("max |Δ logprob| 0.8 above the threshold 0.25",
              lambda rid: (record(IDS, rid=rid), record(IDS, logprobs=[-0.1, -0.1, -0.9, -0.1], rid=rid))),
    "p0066": ("prompt ids differ from the suite's", lambda rid: (record(IDS, rid=rid), record(IDS, prompt=(1, 2, 4), rid=rid))),
}


def large_run(n: int) -> dict:
    """compare_runs (top-k rule) on `n` prompts: |Δ logprob| growing with the index, every 20th split
    within top-k (both pass), NARROW and the BROKEN ones."""
    narrow = [[[token, -0.1], [100 + token, -0.103]] for token in IDS]
    pairs = []
    for index in range(n):
        rid = f"p{index:04d}"
        if rid in BROKEN:
            pairs.append(BROKEN[rid][1](rid))
        elif rid == NARROW:
            pairs.append((record(IDS, top=narrow, rid=rid), record(IDS, top=narrow, rid=rid)))
        elif index % 20 == 19:
            pairs.append(split_pair(True, rid))
        else:
            pairs.append((record(IDS, rid=rid), record(IDS, logprobs=[-0.1 - index * 1e-6] * 4, rid=rid)))
    return compare_many([t for t, _ in pairs], [r for _, r in pairs], LOOSE)


@pytest.fixture(scope="module")
def runs() -> dict[int, dict]:
    return {n: large_run(n) for n in (200, 2000)}


def pages(compare: dict, lang: str = "en") -> dict[str, str]:
    report = build_report(compare, PROVENANCE, manifest=MANIFEST, lang=lang)
    return markdown_pages(report) | html_pages(report, compare)


def section(markdown: str, heading: str) -> list[str]:
    """The table rows of the Markdown section whose heading starts with `heading`."""
    start = next(i for i, line in enumerate(markdown.splitlines()) if line.startswith(f"## {heading}"))
    lines = []
    for line in markdown.splitlines()[start + 1:]:
        if line.startswith("## "):
            break
        lines.append(line)
    return [line for line in lines if line.startswith("| ") and not line.startswith("|---")][1:]


def test_the_front_page_stays_the_same_size_however_many_prompts_pass(runs):
    small, large = pages(runs[200]), pages(runs[2000])
    for name in ("report.md", "report.html"):
        assert len(large[name]) <= len(small[name]) * 1.02, name  # the charts are binned, the lists cut
    assert len(large["report.md"]) < 20_000 and len(large["report.html"]) < 60_000
    assert "… 90 more" in large["report.md"]  # 100 split within top-k, ten of them named in the checks table


def test_every_failing_prompt_is_up_front_with_its_reason_and_outputs(runs):
    front = pages(runs[2000])
    rows = section(front["report.md"], "Failing prompts (6)")
    assert [row.split(" | ")[0] for row in rows] == [f"| {rid}" for rid in BROKEN]
    for row, (reason, _) in zip(rows, BROKEN.values()):
        assert reason.replace("|", "\\|") in row
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rows[3]
    assert all(f"<td>{rid}</td>" in front["report.html"] for rid in BROKEN)
    assert "<script" not in front["report.html"] and "<script" not in front["prompts.html"]
    assert section(pages(runs[2000], "zh")["report.md"], "未通过的提示(6 条)")[0].startswith("| p0011 | 分歧(超出 top-k)")


def test_missing_prompts_and_failing_passages_are_up_front_too():
    compare = compare_one(record(IDS), record(IDS), LOOSE)
    compare["passages"][0]["rel_diff"] = 0.5
    suite = {"name": "two", "prompts": [{"id": "p1"}, {"id": "lost"}]}
    text = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST, suite=suite, lang="en"))
    assert section(text, "Failing prompts (1)") == ["| lost | not compared (a side has no record of it) | — | — | — | — | — |"]
    assert section(text, "Failing passages (1)") == ["| x | 4.48169 | 4.48169 | 0.5 |"]
    assert "| 1 | 1 | 0 | 0 | 0 | 1 | 4 | 1/1 |" in text  # the summary counts the missing prompt


def test_the_worst_prompts_by_each_measure_are_listed_in_order(runs):
    front = pages(runs[2000])["report.md"]

    def ranked(heading: str) -> list[tuple[str, float]]:
        rows = section(front, heading)
        assert [row.split(" | ")[0] for row in rows] == [f"| {rank}" for rank in range(1, len(rows) + 1)]
        return [(row.split(" | ")[2], float(row.split(" | ")[1])) for row in rows]

    delta = ranked("Worst prompts by max |Δ logprob| (largest first): 10 of 1999")
    assert delta[0] == ("p0055", 0.8) and delta[1][0] == "p1998"
    assert [v for _, v in delta] == sorted((v for _, v in delta), reverse=True)
    margin = ranked("Worst prompts by smallest top-1/top-2 margin (reference) (smallest first): 10 of 1999")
    assert [v for _, v in margin] == sorted(v for _, v in margin) and margin[0] == (NARROW, 0.003)
    split = ranked("Worst prompts by first divergence position (earliest first): 10 of 101")
    assert split[0] == ("p0011", 1) and len(split) == 10
    kld = ranked("Worst prompts by max KLD (largest first): 10 of 1999")
    assert [v for _, v in kld] == sorted((v for _, v in kld), reverse=True)
    assert ranked("Worst prompts by mean KLD (largest first)")
    passages = section(front, "Worst passages by perplexity relative difference (largest first): 1 of 1")
    assert passages[0].startswith("| 1 | x |")


def test_the_distributions_are_counted_by_order_of_magnitude(runs):
    front = pages(runs[2000])
    row = section(front["report.md"], "Distributions")[0]
    assert row.startswith("| max \\|Δ logprob\\| per prompt | 1999 | 0 |")
    bins = [pair.split(": ") for pair in row.split(" | ")[-1].rstrip(" |").split(", ")]
    assert bins[0][0] == "≤1e-12" and bins[-1] == ["1e-1", "1"] and sum(int(count) for _, count in bins) == 1999
    for title in ("Prompts by max |Δ logprob|", "Prompts by smallest top-1/top-2 margin", "Distribution of the KLD per position",
                  "Passages by perplexity relative difference"):
        assert f'aria-label="{title}' in front["report.html"]
    assert front["report.html"].count("<svg") == 5  # and |Δ logprob| per position


def test_the_full_tables_of_a_large_run_are_on_a_page_of_their_own(runs):
    for n, compare in runs.items():
        found = pages(compare)
        assert set(found) == {"report.md", "prompts.md", "report.html", "prompts.html"}
        assert "[prompts.md](prompts.md)" in found["report.md"] and '<a href="prompts.html">' in found["report.html"]
        assert "## Per prompt" not in found["report.md"] and "[report.md](report.md)" in found["prompts.md"]
        ids = [f"p{index:04d}" for index in range(n)]
        assert [row.split(" | ")[0] for row in section(found["prompts.md"], "Per prompt")] == [f"| {i}" for i in ids]
        assert len(section(found["prompts.md"], "Output text")) == n - 1  # the error has no text
        assert all(f"<tr><td>{i}</td>" in found["prompts.html"] for i in ids)


def test_a_small_run_keeps_its_tables_inline():
    compare = compare_many([record(IDS, rid=f"p{i}") for i in range(INLINE_ITEMS)],
                           [record(IDS, rid=f"p{i}") for i in range(INLINE_ITEMS)])
    found = pages(compare)
    assert set(found) == {"report.md", "report.html"}
    assert len(section(found["report.md"], "Per prompt")) == INLINE_ITEMS and "## Output text" in found["report.md"]
    assert "prompts.md" not in found["report.md"]


def test_rendering_2000_prompts_takes_well_under_two_seconds(runs):
    started = time.perf_counter()
    pages(runs[2000])
    assert time.perf_counter() - started < 2.0


def test_a_long_list_of_ids_in_a_check_detail_is_cut():
    s = STRINGS["en"]
    ids = [f"p{i}" for i in range(12)]
    assert shorten_lists(s, f"errors: {ids[:10]}; missing: none") == f"errors: {ids[:10]}; missing: none"
    assert shorten_lists(s, f"split within top-k: {ids}") == f"split within top-k: {str(ids[:10])[:-1]}, … 2 more]"
    assert shorten_lists(STRINGS["zh"], f"{ids}").endswith(", … 另 2 条]")


def test_write_report_writes_the_prompt_pages_and_the_sums_cover_them(runs, tmp_path):
    from llm_parity.download import build_manifest
    from llm_parity.pipeline import write_report
    from llm_parity.results import RunDir, schema_tag, write_json, write_sums

    compare = runs[200]
    run = RunDir(tmp_path / "run")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    write_json(run.manifest, build_manifest(tmp_path / "model", source="local", repo_id="model", revision=None,
                                            resolved_revision=None), "manifest")
    prompts = [{"id": p["id"], "kind": "chat", "messages": [{"role": "user", "content": "hi"}], "prompt_ids": [1, 2, 3],
                "max_tokens": 4} for p in compare["prompts"]]
    write_json(run.suite, {"schema": schema_tag("suite"), "name": "large", "sha256": "a" * 64, "source_sha256": "c" * 64,
                           "tokenizer_sha256": "d" * 64, "stop_ids": [EOS], "prompts": prompts, "passages": []}, "suite")
    write_report(run, compare, PROVENANCE, lang="en")
    write_sums(run)
    listed = {line.split("  ", 1)[1] for line in run.sums.read_text().splitlines()}
    assert {"report/report.md", "report/prompts.md", "report/report.html", "report/prompts.html"} <= listed
    assert "large (200 prompts)" in run.report_md.read_text(encoding="utf-8")


@pytest.mark.parametrize("escape_cell, separator", [(cell, " | "), (html.escape, "</td><td>")])
def test_a_row_escaped_at_once_is_each_cell_escaped(escape_cell, separator):
    rows = [["p1", 0.5, "a|b <i>x</i> & \"q\"\nnext", None], ["nul \x00 inside", "|", ""], [], ["\x00"]]
    for row in rows:
        assert joined_cells(row, escape_cell, separator) == separator.join(escape_cell(str(value)) for value in row)
