"""The report's words in each language (zh, the seed's, is the default)."""

STRINGS = {
    "zh": {
        "title": "精度一致性验证报告", "verdict": "结论", "pass": "✅ 通过", "fail": "❌ 未通过", "not_checked": "未检查",
        "unchecked_note": "未检查的项目({names})无法运行:不计为未通过,也不计为通过。",
        "env": "环境", "side": "侧", "backend": "后端", "packages": "软件版本", "hardware": "硬件", "mode": "图模式",
        "image": "镜像", "unpinned": "未按 digest 固定", "items": "验证项", "item": "验证项", "status": "状态", "detail": "详情",
        "precision": "精度指标", "metric": "指标", "expected": "预期(阈值)", "measured": "实测",
        "prompts": "逐条对比", "prompt": "提示", "result": "结果", "tokens": "token 数 (目标/参考)",
        "divergence": "首个分歧", "passages": "Perplexity 对比", "passage": "段落",
        "target": "目标", "reference": "参考", "rel": "相对差异",
        "why": "阈值说明",
        "hidden": "隐藏层状态不经服务 API 暴露,本报告不声称对其做了比较;比较的是各位置所选 token 与 top-k 的 logprob。",
        "model": "模型清单 sha256", "suite": "测试集", "limit": "前 {limit} 条",
        "profile_override": "按 --profile-override 以配置 {profile} 判定,尽管{differences}", "dtype": "数据类型", "profile": "配置",
        "identical": "完全一致", "split_within_top_k": "分歧(在彼此 top-k 内)", "split_outside_top_k": "分歧(超出 top-k)",
        "error": "错误", "at": "位置", "margin": "top-1/top-2 间隔", "near_tie": "近似平局",
        "outputs": "输出文本", "chart_delta": "各位置 |Δ logprob|(对数坐标)", "chart_margin": "各提示最小 top-1/top-2 间隔(红色:发生分歧)",
        "chart_ppl": "各段落 perplexity", "position": "位置", "mean_delta": "平均 |Δ logprob|", "topk_delta": "top-k 最大 |Δ logprob|",
        "min_margin": "最小 top-1/top-2 间隔(参考侧)",
        "bench": "服务性能", "concurrency": "并发", "out_tps": "输出 token/s", "failed": "失败",
        "bench_note": "流式 greedy 补全,每请求 {output} 个输出 token(忽略 EOS),输入 {low}-{high} token;与 vllm bench serve 定义相同。",
        "chart_bench": "各并发的输出吞吐 (token/s)",
        "revision": "模型版本", "moving": "按分支名 {asked} 下载,该分支可能移动:请固定提交号",
        "unresolved": "{asked} 未解析为提交号(该来源不提供提交号):文件由清单中的 sha256 固定",
        "default_branch": "默认分支",
        "replay": "重放(按结果目录自身记录重新运行)", "overrides": "覆盖的设置", "env_differences": "版本或硬件差异",
        "byte_identical": "逐字节一致", "within_thresholds": "在阈值内", "not_reproducible": "不可复现",
        "replay_note": "逐字节一致:重放记录与存储记录字节相同;在阈值内:不同,但按记录的数据类型的阈值全部检查通过;不可复现:有检查未通过,并给出首个不同的提示与 token。",
    },
    "en": {
        "title": "Parity verification report", "verdict": "Verdict", "pass": "✅ pass", "fail": "❌ fail", "not_checked": "not checked",
        "unchecked_note": "Not checked ({names}): these checks could not run; they count neither as a failure nor as a pass.",
        "env": "Environment", "side": "Side", "backend": "Backend", "packages": "Packages", "hardware": "Hardware", "mode": "Graph mode",
        "image": "Image", "unpinned": "not pinned by digest", "items": "Validation items", "item": "Item", "status": "Status", "detail": "Detail",
        "precision": "Precision metrics", "metric": "Metric", "expected": "Expected (threshold)", "measured": "Measured",
        "prompts": "Per prompt", "prompt": "Prompt", "result": "Result", "tokens": "tokens (target/reference)",
        "divergence": "First divergence", "passages": "Perplexity", "passage": "Passage",
        "target": "target", "reference": "reference", "rel": "relative difference",
        "why": "Why these thresholds",
        "hidden": "Hidden states are not exposed by the serving API, so this report does not claim to compare them; it compares the logprobs of the chosen token and the top-k at each position.",
        "model": "model manifest sha256", "suite": "suite", "limit": "first {limit} prompts",
        "profile_override": "judged with profile {profile} by --profile-override, although {differences}", "dtype": "dtype", "profile": "profile",
        "identical": "identical", "split_within_top_k": "split within top-k", "split_outside_top_k": "split outside top-k",
        "error": "error", "at": "position", "margin": "top-1/top-2 margin", "near_tie": "near-tie",
        "outputs": "Output text", "chart_delta": "|Δ logprob| along each sequence (log scale)", "chart_margin": "Smallest top-1/top-2 margin per prompt (red: sequences split)",
        "chart_ppl": "Perplexity per passage", "position": "position", "mean_delta": "mean |Δ logprob|", "topk_delta": "top-k max |Δ logprob|",
        "min_margin": "smallest top-1/top-2 margin (reference)",
        "bench": "Serving performance", "concurrency": "concurrency", "out_tps": "output tok/s", "failed": "failed",
        "bench_note": "Streamed greedy completions, {output} output tokens per request (EOS ignored), {low}-{high} input tokens; the same definitions as vllm bench serve.",
        "chart_bench": "Output throughput per concurrency (tokens/s)",
        "revision": "model revision", "moving": "asked for the branch {asked}, which can move: pin the commit",
        "unresolved": "{asked} was not resolved to a commit (the source names none): the manifest's sha256 pins the files",
        "default_branch": "the default branch",
        "replay": "Replay (run again from the folder's own records)", "overrides": "overridden settings",
        "env_differences": "differences in versions or hardware",
        "byte_identical": "byte-identical", "within_thresholds": "within thresholds", "not_reproducible": "not reproducible",
        "replay_note": "byte-identical: the replayed records have the stored bytes; within thresholds: they differ, but every check holds at the thresholds of the recorded dtype; not reproducible: a check fails, and the first differing prompt and token are named.",
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

# compare.json keeps its detail strings in English (one language for machines and logs); the zh
# report says them in Chinese. Longest phrases first, so a short one never splits a longer one.
DETAIL_PHRASES_ZH = sorted({
    "both sides decoded from the suite's rendered prompt ids": "两侧均从测试集渲染的输入 token 解码",
    "prompt ids differ": "输入 token 不同",
    "the server's chat endpoint rendered the same prompt ids": "服务端对话接口渲染出相同的输入 token",
    "the server's chat endpoint returned no prompt ids to compare": "服务端对话接口未返回可比较的输入 token",
    "not checked, the server returned no prompt ids": "未检查,服务端未返回输入 token",
    "server rendered other ids for": "服务端渲染出不同 token 的提示",
    "no prompt was answered by both sides": "没有两侧都有结果的提示",
    "identical, or split within each other's top-k": "完全一致,或在彼此 top-k 内分歧",
    "split within top-k": "在 top-k 内分歧",
    "split outside top-k": "超出 top-k 的分歧",
    "text differs despite equal ids": "token 相同但文本不同",
    "equal where ids are equal": "token 相同处文本相同",
    "chosen-token logprobs on the common prefix of each prompt": "各提示公共前缀上所选 token 的 logprob",
    "no passages to compare": "没有可比较的段落",
    "could be scored": "可计算",
    "none of the": "全部",
    "worst of": "最差值,共",
    "passages": "个段落",
    "usage equals id counts; at most one end-of-sequence id, last": "usage 与 token 数一致;至多一个结束 token,且在末尾",
    "problems in": "有问题的提示",
    "identical": "完全一致",
    "is within the logprob noise this dtype allows": "在此数据类型允许的 logprob 噪声之内",
    "so the two backends may rank the pair differently": "两个后端可能对这两个 token 排序不同",
    "exceeds the allowed noise": "超过允许的噪声",
    "not a rounding tie": "不是舍入造成的平局",
    "one side ended after": "一侧在",
    "tokens while the other went on": "个 token 后结束,另一侧继续生成",
    "top-1/top-2 margin": "top-1/top-2 间隔",
    "margin": "间隔",
    "errors": "错误",
    "missing": "缺失",
    "none": "无",
}.items(), key=lambda pair: -len(pair[0]))


def detail_text(text: str, lang: str) -> str:
    """A detail string of compare.json in the report's language."""
    if lang != "zh" or not isinstance(text, str):
        return text
    for english, chinese in DETAIL_PHRASES_ZH:
        text = text.replace(english, chinese)
    return text
