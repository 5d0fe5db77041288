"""report.md laid out like the seed report: environment, validation items with ✅/❌, and a
precision table of expected vs measured, each number with the threshold it was held to."""
from __future__ import annotations

STRINGS = {
    "zh": {
        "title": "精度一致性验证报告", "verdict": "结论", "pass": "✅ 通过", "fail": "❌ 未通过",
        "env": "环境", "side": "侧", "backend": "后端", "packages": "软件版本", "hardware": "硬件", "mode": "图模式",
        "items": "验证项", "item": "验证项", "status": "状态", "detail": "详情",
        "precision": "精度指标", "metric": "指标", "expected": "预期(阈值)", "measured": "实测",
        "prompts": "逐条对比", "prompt": "提示", "result": "结果", "tokens": "token 数 (目标/参考)",
        "divergence": "首个分歧", "passages": "Perplexity 对比", "passage": "段落",
        "target": "目标 (vLLM)", "reference": "参考 (transformers)", "rel": "相对差异",
        "why": "阈值说明", "hidden": "隐藏层状态不经服务 API 暴露,本报告不声称对其做了比较;比较的是各位置所选 token 与 top-k 的 logprob。",
        "model": "模型清单 sha256", "suite": "测试集 sha256", "dtype": "数据类型", "profile": "配置",
        "identical": "完全一致", "split_within_top_k": "分歧(在彼此 top-k 内)", "split_outside_top_k": "分歧(超出 top-k)", "error": "错误",
        "at": "位置", "margin": "top-1/top-2 间隔", "notes": "说明",
    },
    "en": {
        "title": "Parity verification report", "verdict": "Verdict", "pass": "✅ pass", "fail": "❌ fail",
        "env": "Environment", "side": "Side", "backend": "Backend", "packages": "Packages", "hardware": "Hardware", "mode": "Graph mode",
        "items": "Validation items", "item": "Item", "status": "Status", "detail": "Detail",
        "precision": "Precision metrics", "metric": "Metric", "expected": "Expected (threshold)", "measured": "Measured",
        "prompts": "Per prompt", "prompt": "Prompt", "result": "Result", "tokens": "tokens (target/reference)",
        "divergence": "First divergence", "passages": "Perplexity", "passage": "Passage",
        "target": "target (vLLM)", "reference": "reference (transformers)", "rel": "relative difference",
        "why": "Why these thresholds", "hidden": "Hidden states are not exposed by the serving API, so this report does not claim to compare them; it compares the logprobs of the chosen token and the top-k at each position.",
        "model": "model manifest sha256", "suite": "suite sha256", "dtype": "dtype", "profile": "profile",
        "identical": "identical", "split_within_top_k": "split within top-k", "split_outside_top_k": "split outside top-k", "error": "error",
        "at": "position", "margin": "top-1/top-2 margin", "notes": "Notes",
    },
}

CHECK_NAMES = {
    "all_prompts_answered": {"zh": "全部提示均有结果", "en": "every prompt answered"},
    "prompt_ids_from_suite": {"zh": "输入 token 与测试集一致", "en": "prompt ids from the rendered suite"},
    "chat_template": {"zh": "服务端对话模板一致", "en": "server chat template renders the same ids"},
    "token_ids": {"zh": "Token 一致性 (greedy)", "en": "token ids (greedy)"},
    "text": {"zh": "文本一致性", "en": "text"},
    "max_abs_logprob_diff": {"zh": "Logprob 最大绝对差", "en": "max |Δ logprob|"},
    "perplexity_rel_diff": {"zh": "Perplexity 相对差异", "en": "perplexity relative difference"},
    "token_accounting": {"zh": "token 计数", "en": "token accounting"},
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 else "0"
    return "—" if value is None else str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _environment(lines: list, s: dict, provenance: dict) -> None:
    lines += [f"## {s['env']}", "", f"| {s['side']} | {s['backend']} | {s['packages']} | {s['hardware']} | {s['mode']} |", "|---|---|---|---|---|"]
    for side, doc in provenance.items():
        packages = ", ".join(f"{name} {version}" for name, version in doc["packages"].items() if version)
        server = doc.get("server") or {}
        lines.append(f"| {s[side]} | {doc['backend']} ({doc['device']}) | {_cell(packages)} | "
                     f"{_cell(doc['hardware']['cpu'])}{'; ' + _cell(doc['hardware']['accelerator']) if doc['hardware']['accelerator'] else ''} | "
                     f"{server.get('graph_mode', '—')} |")
    notes = [note for doc in provenance.values() for note in doc.get("notes", [])]
    lines += [""] + [f"> {note}" for note in notes] + ([""] if notes else [])


def render_markdown(compare: dict, provenance: dict, *, lang: str = "zh") -> str:
    """The report; `provenance` maps side name to its provenance document."""
    s = STRINGS[lang]
    lines = [f"# {s['title']}: {compare['profile']}", "",
             f"**{s['verdict']}: {s[compare['verdict']]}**", "",
             f"- {s['dtype']}: `{compare['dtype']}`",
             f"- {s['model']}: `{compare['model_manifest_sha256']}`",
             f"- {s['suite']}: `{compare['suite_sha256']}`", ""]
    _environment(lines, s, provenance)
    lines += [f"## {s['items']}", "", f"| {s['item']} | {s['status']} | {s['detail']} |", "|---|---|---|"]
    for check in compare["checks"]:
        lines.append(f"| {CHECK_NAMES[check['name']][lang]} | {'✅' if check['passed'] else '❌'} | {_cell(check['detail'])} |")
    lines += ["", f"## {s['precision']}", "", f"| {s['metric']} | {s['expected']} | {s['measured']} | {s['status']} |", "|---|---|---|---|"]
    for check in compare["checks"]:
        if check["name"] in ("token_ids", "text", "max_abs_logprob_diff", "perplexity_rel_diff"):
            lines.append(f"| {CHECK_NAMES[check['name']][lang]} | {_cell(_fmt(check['threshold']))} | "
                         f"{_cell(_fmt(check['measured']))} | {'✅' if check['passed'] else '❌'} |")
    summary = compare["summary"]
    lines += [f"| mean \\|Δ logprob\\| | — | {_fmt(summary['mean_abs_logprob_diff'])} | |",
              f"| top-k max \\|Δ logprob\\| | — | {_fmt(summary['top_k_max_abs_logprob_diff'])} | |",
              f"| min {s['margin']} ({s['reference']}) | — | {_fmt(summary['min_reference_margin'])} | |",
              "", f"**{s['why']}:** {compare['thresholds']['why']}", "", s["hidden"], ""]
    lines += [f"## {s['prompts']}", "", f"| {s['prompt']} | {s['result']} | {s['tokens']} | max \\|Δ\\| | {s['divergence']} |", "|---|---|---|---|---|"]
    for prompt in compare["prompts"]:
        if prompt["status"] == "error":
            lines.append(f"| {prompt['id']} | ❌ {s['error']} | — | — | {_cell(prompt.get('target_error') or prompt.get('reference_error'))} |")
            continue
        div = prompt["first_divergence"]
        where = "—" if div is None else (f"{s['at']} {div['position']}: {div['target_token']} vs {div['reference_token']}, "
                                          f"{s['margin']} {_fmt(div['target_margin'])}/{_fmt(div['reference_margin'])}; {div['why']}")
        lines.append(f"| {prompt['id']} | {s[prompt['status']]} | {prompt['target_tokens']}/{prompt['reference_tokens']} | "
                     f"{_fmt(prompt['max_abs_logprob_diff'])} | {_cell(where)} |")
    lines += ["", f"## {s['passages']}", "", f"| {s['passage']} | {s['target']} | {s['reference']} | {s['rel']} |", "|---|---|---|---|"]
    for passage in compare["passages"]:
        if passage.get("error"):
            lines.append(f"| {passage['id']} | — | — | {_cell(passage['error'])} |")
        else:
            lines.append(f"| {passage['id']} | {passage['target_perplexity']:.6g} | {passage['reference_perplexity']:.6g} | {passage['rel_diff']:.3g} |")
    return "\n".join(lines) + "\n"
