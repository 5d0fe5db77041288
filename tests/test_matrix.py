"""The configuration matrix's pure parts: variant definitions, the profile a variant runs, which
settings differ from base, and which image a variant needs."""
import json

import pytest
from test_ascend_path import make_dry_run
from test_compare import EOS, PASSAGE, STRICT, SUITE_SHA, generations, record, scores

from llm_parity import cli
from llm_parity.matrix import (BASE, DEFAULT_VARIANTS, Variant, comparison, defined_differences, differences, select,
                               serve_flags, variant_profile, variants_of, why_not_here)
from llm_parity.records import decoding_of
from llm_parity.profiles import load_profile
from llm_parity.results import ResultFileError, RunDir
from llm_parity.serve import spec_from_profile, vllm_command


def profile_with(tmp_path, **changes):
    doc = json.loads(load_profile("tiny-llama").path.read_text())
    doc.update(changes)
    path = tmp_path / "matrix-profile.json"
    path.write_text(json.dumps(doc))
    return load_profile(str(path))


def settings_of(profile, variant: Variant, *, concurrency=16, image=None) -> dict:
    """What a variant's provenance would say it ran with, from the real command line builder."""
    spec = spec_from_profile(variant_profile(profile, variant), "models/m", port=1234)
    return {"argv": vllm_command(spec), "env_set": spec.env, "concurrency": variant.concurrency or concurrency,
            "image": image}


def test_the_default_variants_are_the_profiles_when_it_names_none():
    names = [variant.name for variant in variants_of(load_profile("tiny-llama"))]
    assert names == list(DEFAULT_VARIANTS)
    assert {"base", "eager", "tp2", "concurrency-1", "no-prefix-cache", "no-chunked-prefill", "repeat"} <= set(names)


def test_a_profile_names_its_own_variants_and_needs_a_base(tmp_path):
    own = profile_with(tmp_path, variants={"base": {}, "bf16": {"serve": {"dtype": "bfloat16"}}})
    assert [variant.name for variant in variants_of(own)] == ["base", "bf16"]
    with pytest.raises(ResultFileError, match=r"matrix-profile\.json: field variants: no variant named 'base'"):
        variants_of(profile_with(tmp_path, variants={"eager": {"serve": {"enforce_eager": True}}}))


def test_a_bad_variant_is_refused_naming_file_and_field(tmp_path):
    with pytest.raises(ResultFileError, match=r"matrix-profile\.json: field variants\.eager\.serve\.enforce_eager"):
        profile_with(tmp_path, variants={"base": {}, "eager": {"serve": {"enforce_eager": "yes"}}})


def test_unknown_variant_names_are_refused_with_the_known_ones():
    variants = variants_of(load_profile("tiny-llama"))
    assert [v.name for v in select(variants, ["repeat", "eager"])] == ["eager", "repeat"]
    with pytest.raises(ValueError, match="unknown variant nope: the profile's variants are base, eager"):
        select(variants, ["nope"])


def test_a_variant_adds_its_env_and_flags_to_the_profiles(tmp_path):
    profile = profile_with(tmp_path, serve={**load_profile("tiny-llama").serve, "env": {"A": "1"}, "extra_args": ["--x"]})
    ran = variant_profile(profile, Variant("v", {"serve": {"tensor_parallel_size": 2, "env": {"B": "2"},
                                                              "extra_args": ["--y"]}}))
    assert ran.serve["env"] == {"A": "1", "B": "2"} and ran.serve["extra_args"] == ["--x", "--y"]
    assert ran.serve["tensor_parallel_size"] == 2 and profile.serve["tensor_parallel_size"] == 1
    with pytest.raises(ResultFileError, match="field thresholds.float16"):
        variant_profile(profile, Variant("fp16", {"serve": {"dtype": "float16"}}))


def test_the_settings_that_differ_from_base_are_named_and_the_port_is_not():
    profile = load_profile("tiny-llama")
    base = settings_of(profile, Variant(BASE, {}))
    other_port = [*base["argv"], "--port", "9"]  # vLLM keeps the last value of a repeated flag
    assert differences(settings_of(profile, Variant("repeat", {})), {**base, "argv": other_port}) == []
    found = {name: differences(settings_of(profile, Variant(name, DEFAULT_VARIANTS[name])), base)
             for name in ("eager", "tp2", "concurrency-1", "no-prefix-cache")}
    assert found == {"eager": ["--enforce-eager (base: not set)"],
                     "tp2": ["--tensor-parallel-size 2 (base: 1)", "VLLM_CPU_OMP_THREADS_BIND=0|1 (base: unset)"],
                     "concurrency-1": ["concurrency 1 (base: 16)"],
                     "no-prefix-cache": ["--no-enable-prefix-caching (base: not set)"]}
    bf16 = settings_of(profile, Variant("bf16", {"serve": {"dtype": "bfloat16"}}), image="vllm-ascend:v0.23.0")
    assert differences(bf16, base) == ["--dtype bfloat16 (base: float32)", "image vllm-ascend:v0.23.0 (base: unset)"]
    assert differences(base, settings_of(profile, Variant("eager", DEFAULT_VARIANTS["eager"]))) == ["without --enforce-eager"]


def test_a_variant_that_did_not_run_names_what_it_would_have_changed():
    assert defined_differences({"serve": {"enforce_eager": True, "tensor_parallel_size": 2, "env": {"A": "1"},
                                          "extra_args": ["--x", "3"]}, "concurrency": 1, "image_tag": "v0.23.0"}) == [
        "--enforce-eager (defined; not run)", "--tensor-parallel-size 2 (defined; not run)", "--x 3 (defined; not run)",
        "A=1 (defined; not run)", "concurrency 1 (defined; not run)", "image_tag v0.23.0 (defined; not run)"]


def test_serve_flags_keep_the_last_value_of_a_repeated_flag_as_vllm_does():
    argv = ["python", "launcher", "serve", "/m", "--tensor-parallel-size", "1", "--enforce-eager",
            "--hf-overrides", '{"a": 1}', "--tensor-parallel-size", "2"]
    assert serve_flags(argv) == {"--tensor-parallel-size": "2", "--enforce-eager": "", "--hf-overrides": '{"a": 1}'}


@pytest.mark.parametrize("here, runs", [("v0.23.0", True), ("v0.23.0-a3", True), ("v0.18.0", False), (None, False)])
def test_a_variant_that_names_an_image_runs_only_in_that_image(here, runs):
    variant = Variant("next-release", {"image_tag": "v0.23.0"})
    reason = why_not_here(variant, here)
    assert (reason is None) == runs
    if not runs:
        assert "make matrix ASCEND_TAG=v0.23.0 VARIANTS=next-release" in reason
    assert why_not_here(Variant("eager", {}), here) is None


def test_variants_live_under_variants_and_base_is_the_target(tmp_path):
    run = RunDir(tmp_path)
    assert Variant(BASE, {}).results(run).generations("target") == tmp_path / "target" / "generations.records"
    eager = Variant("eager", {}).results(run)
    assert eager.provenance("target") == tmp_path / "variants" / "eager" / "provenance.json"
    assert eager.server_log == tmp_path / "variants" / "eager" / "server.log"
    assert eager.suite == run.suite and eager.generations("reference") == run.generations("reference")


def side_of(records, dtype="float32") -> dict:
    suite = {"sha256": SUITE_SHA}
    return {"generations": generations("target", suite, records, decoding_of({"top_logprobs": 2}, dtype)),
            "perplexity": scores("target", suite, [PASSAGE])}


SUITE = {"sha256": SUITE_SHA, "stop_ids": [EOS], "prompts": [{"id": "p1", "prompt_ids": [1, 2, 3]}]}


def test_two_sides_compare_with_compares_checks_and_their_records_byte_for_byte():
    same = comparison(side_of([record([5, EOS])]), side_of([record([5, EOS])]), suite=SUITE, thresholds=STRICT,
                      profile="test", records=True)
    assert (same["verdict"], same["records_identical"], same["identical"], same["first_split"]) == ("pass", True, 1, None)
    nudged = comparison(side_of([record([5, EOS], logprobs=[-0.1, -0.10000001])]), side_of([record([5, EOS])]),
                        suite=SUITE, thresholds=STRICT, profile="test", records=True)
    assert (nudged["verdict"], nudged["records_identical"]) == ("pass", False)
    split = comparison(side_of([record([5, EOS])]), side_of([record([6, EOS])]), suite=SUITE, thresholds=STRICT,
                       profile="test", records=False)
    assert split["verdict"] == "fail" and split["first_split"] == "p1 at token 0: 5 vs 6"
    assert split["records_identical"] is None and split["failing"][0].startswith("token_ids")


def test_sides_decoded_differently_are_not_comparable_and_say_why():
    other = comparison(side_of([record([5, EOS])], "bfloat16"), side_of([record([5, EOS])]), suite=SUITE,
                       thresholds=STRICT, profile="test", records=True)
    assert other["verdict"] == "not_comparable" and "differ in decoding" in other["reason"]
    assert other["records_identical"] is False and other["identical"] is None


def test_an_unknown_variant_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(cli.StageFailed) as failed:
        cli.matrix(profile="tiny-llama", run="m", results=str(tmp_path), variants="eager,nope")
    assert failed.value.code == cli.EXIT_UNUSABLE and "error: unknown variant nope" in str(failed.value)
    assert not (tmp_path / "m").exists()


def test_make_matrix_runs_inside_the_image_on_an_ascend_host_and_in_the_local_setup_elsewhere():
    knobs = ("PROFILE=tiny-llama", "VARIANTS=base,tp2", "NPUS=0,1")
    ascend = make_dry_run("matrix", "ON_ASCEND=/dev/davinci_manager", *knobs)
    assert ascend.returncode == 0, ascend.stderr
    line = next(line for line in ascend.stdout.replace("\\\n", " ").splitlines() if line.startswith("docker run"))
    assert "--device /dev/davinci0 --device /dev/davinci1" in line
    assert line.endswith("matrix --profile tiny-llama --run tiny-llama --lang zh --variants base,tp2 --no-reference")
    here = make_dry_run("matrix", "ON_ASCEND=", *knobs)
    assert here.returncode == 0 and "docker" not in here.stdout
    assert here.stdout.splitlines()[-1].endswith("inv matrix --profile tiny-llama --run tiny-llama --lang zh --variants base,tp2")
