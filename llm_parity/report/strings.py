"""The report's words in each language (zh, the seed's, is the default)."""

STRINGS = {
    "zh": {
        "title": "精度一致性验证报告", "verdict": "结论", "pass": "✅ 通过", "fail": "❌ 未通过",
        "env": "环境", "side": "侧", "backend": "后端", "packages": "软件版本", "hardware": "硬件", "mode": "图模式",
        "image": "镜像", "unpinned": "未按 digest 固定", "items": "验证项", "item": "验证项", "status": "状态", "detail": "详情",
        "precision": "精度指标", "metric": "指标", "expected": "预期(阈值)", "measured": "实测",
        "prompts": "逐条对比", "prompt": "提示", "result": "结果", "tokens": "token 数 (目标/参考)",
        "divergence": "首个分歧", "passages": "Perplexity 对比", "passage": "段落",
        "target": "目标 (vLLM)", "reference": "参考 (transformers)", "rel": "相对差异",
        "why": "阈值说明",
        "hidden": "隐藏层状态不经服务 API 暴露,本报告不声称对其做了比较;比较的是各位置所选 token 与 top-k 的 logprob。",
        "model": "模型清单 sha256", "suite": "测试集 sha256", "dtype": "数据类型", "profile": "配置",
        "identical": "完全一致", "split_within_top_k": "分歧(在彼此 top-k 内)", "split_outside_top_k": "分歧(超出 top-k)",
        "error": "错误", "at": "位置", "margin": "top-1/top-2 间隔", "near_tie": "近似平局",
        "outputs": "输出文本", "chart_delta": "各位置 |Δ logprob|(对数坐标)", "chart_margin": "各提示最小 top-1/top-2 间隔(红色:发生分歧)",
        "chart_ppl": "各段落 perplexity", "position": "位置", "mean_delta": "平均 |Δ logprob|", "topk_delta": "top-k 最大 |Δ logprob|",
        "min_margin": "最小 top-1/top-2 间隔(参考侧)",
    },
    "en": {
        "title": "Parity verification report", "verdict": "Verdict", "pass": "✅ pass", "fail": "❌ fail",
        "env": "Environment", "side": "Side", "backend": "Backend", "packages": "Packages", "hardware": "Hardware", "mode": "Graph mode",
        "image": "Image", "unpinned": "not pinned by digest", "items": "Validation items", "item": "Item", "status": "Status", "detail": "Detail",
        "precision": "Precision metrics", "metric": "Metric", "expected": "Expected (threshold)", "measured": "Measured",
        "prompts": "Per prompt", "prompt": "Prompt", "result": "Result", "tokens": "tokens (target/reference)",
        "divergence": "First divergence", "passages": "Perplexity", "passage": "Passage",
        "target": "target (vLLM)", "reference": "reference (transformers)", "rel": "relative difference",
        "why": "Why these thresholds",
        "hidden": "Hidden states are not exposed by the serving API, so this report does not claim to compare them; it compares the logprobs of the chosen token and the top-k at each position.",
        "model": "model manifest sha256", "suite": "suite sha256", "dtype": "dtype", "profile": "profile",
        "identical": "identical", "split_within_top_k": "split within top-k", "split_outside_top_k": "split outside top-k",
        "error": "error", "at": "position", "margin": "top-1/top-2 margin", "near_tie": "near-tie",
        "outputs": "Output text", "chart_delta": "|Δ logprob| along each sequence (log scale)", "chart_margin": "Smallest top-1/top-2 margin per prompt (red: sequences split)",
        "chart_ppl": "Perplexity per passage", "position": "position", "mean_delta": "mean |Δ logprob|", "topk_delta": "top-k max |Δ logprob|",
        "min_margin": "smallest top-1/top-2 margin (reference)",
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
