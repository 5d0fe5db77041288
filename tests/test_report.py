"""Report sections from hand-made records: honest statements, flags, both languages."""
from test_compare import LOOSE, compare_many, compare_one, record, split_pair

from llm_parity.report import build_report
from llm_parity.report.markdown import render_markdown

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

    from llm_parity.report.html import decade_counts, render_html

    compare = compare_one(record([5, 6]), record([5, 6]), forced=sharper)
    report = build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en")
    en = render_markdown(report)
    assert "## Past the split: distributions under teacher forcing" in en
    row = next(line for line in en.splitlines() if line.startswith("| p1 | 2 |"))
    assert "100 %" in row  # same top-1 at both positions
    assert "mean KLD 1.18 ± 0" in en and "99.9 %: 1.18" in en and "a lower bound on the full-vocabulary KL" in en
    assert "表 KL 的下界" in render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST))
    assert "Distribution of the KLD per position" in render_html(report, compare)
    assert decade_counts([0.0, 3e-13, 2e-3, 5e-3, 0.5]) == (
        ["≤1e-12"] + [f"1e{d}" for d in range(-11, 0)], [2] + [0] * 8 + [2, 0, 1])


def test_without_teacher_forcing_the_report_says_what_is_missing():
    compare = compare_one(record([5]), record([5]), forced=None)
    en = render_markdown(build_report(compare, PROVENANCE, manifest=MANIFEST, lang="en"))
    assert "No teacher-forced scores: the reference has not scored the target's answers" in en
