"""The pieces of a replay that need no model: the serve flags read back from a recorded command line,
the profile taken from provenance, the environment differences, and `make replay`'s command lines."""
import copy

import pytest
from test_ascend_path import make_dry_run

from llm_parity.profiles import DEMO_PROFILE, load_profile
from llm_parity.replay import Recorded, environment_differences, recorded_profile
from llm_parity.results import ResultFileError, RunDir
from llm_parity.serve import serve_settings, spec_from_profile, vllm_command


def test_the_serve_settings_of_a_recorded_command_line_are_the_ones_it_was_started_with():
    profile = load_profile(DEMO_PROFILE).with_serve(dtype="bfloat16", max_num_seqs=3, enforce_eager=True,
                                                    extra_args=["--seed", "7"])
    argv = vllm_command(spec_from_profile(profile, "/somewhere/model", port=8123))
    assert serve_settings(argv) == {"dtype": "bfloat16", "max_model_len": 1024, "max_num_seqs": 3,
                                    "tensor_parallel_size": 1, "enforce_eager": True, "extra_args": ["--seed", "7"]}
    with pytest.raises(ValueError, match="not a `vllm serve` command line"):
        serve_settings(["python", "-m", "http.server"])


def provenance(profile) -> dict:
    return {"side": "reference", "profile": {"name": profile.name, "sha256": profile.sha256, "document": profile.document},
            "backend": "transformers", "device": "cpu", "packages": {"torch": "2.9.0", "vllm": None},
            "hardware": {"platform": "Linux", "cpu": "Xeon (2 logical cores)", "accelerator": None},
            "image": {"reference": None, "digest": None, "pinned": None},
            "env": {"LCCL_DETERMINISTIC": "1", "VLLM_CACHE_ROOT": "/a/cache"}, "server": None}


def recorded(tmp_path, doc: dict) -> Recorded:
    return Recorded(RunDir(tmp_path), "reference", suite={}, manifest={}, provenance=doc, generations={}, perplexity={})


def test_the_profile_comes_from_the_provenance_and_must_have_the_recorded_hash(tmp_path):
    profile = load_profile(DEMO_PROFILE)
    doc = provenance(profile)
    assert recorded_profile(recorded(tmp_path, doc)).document == profile.document
    changed = copy.deepcopy(doc)
    changed["profile"]["document"]["thresholds"]["float32"]["max_abs_logprob_diff"] = 1.0
    with pytest.raises(ResultFileError, match=f"{tmp_path / 'reference' / 'provenance.json'}: field profile.sha256: "
                                              f"expected {profile.sha256}"):
        recorded_profile(recorded(tmp_path, changed))
    del doc["profile"]
    with pytest.raises(ResultFileError, match="field profile: not recorded .* pass --profile"):
        recorded_profile(recorded(tmp_path, doc))
    assert recorded_profile(recorded(tmp_path, doc), DEMO_PROFILE).sha256 == profile.sha256


def test_every_difference_in_versions_or_hardware_is_listed_but_not_where_caches_live():
    before = provenance(load_profile(DEMO_PROFILE))
    after = copy.deepcopy(before)
    after["packages"]["torch"] = "2.13.0+cpu"
    after["hardware"]["accelerator"] = "Ascend 910B"
    after["env"] = {"VLLM_CACHE_ROOT": "/b/cache"}
    after["server"] = {"version": "0.18.0", "argv": ["vllm", "serve", "/b"], "url": "http://127.0.0.1:1"}
    assert environment_differences(before, after) == [
        {"field": "env.LCCL_DETERMINISTIC", "recorded": "1", "here": None},
        {"field": "hardware.accelerator", "recorded": None, "here": "Ascend 910B"},
        {"field": "packages.torch", "recorded": "2.9.0", "here": "2.13.0+cpu"},
        {"field": "server.version", "recorded": None, "here": "0.18.0"},
    ]


def test_make_replay_runs_here_or_in_the_sides_image_with_the_folder_mounted():
    here = make_dry_run("replay", "RUN=/received/demo", "SIDE=target", "IN_IMAGE=0", "DTYPE=bfloat16").stdout
    assert "inv replay --run /received/demo --side target --dtype bfloat16" in here
    image = make_dry_run("replay", "RUN=/received/demo", "SIDE=target", "IN_IMAGE=1", "MODEL=/m/tiny").stdout
    docker = next(line for line in image.replace("\\\n", " ").splitlines() if line.startswith("docker run"))
    assert "--device /dev/davinci_manager" in docker and "-v /received:/work/results" in docker
    assert "-v /m/tiny:/work/model:ro" in docker and "-e LLM_PARITY_IMAGE_DIGEST=" in docker
    assert docker.endswith("replay --run demo --model /work/model --side target --device cpu --lang zh")
    reference = make_dry_run("replay", "RUN=demo", "IN_IMAGE=1").stdout
    assert "llm-parity-reference:latest replay --run demo --side reference" in reference
    assert "SIDE=other: make replay runs SIDE=reference or SIDE=target" in make_dry_run("replay", "SIDE=other").stderr
