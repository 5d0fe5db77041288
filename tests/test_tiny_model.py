"""The embedded model is the seed's architecture at small scale, with the real Llama-3 tokenizer."""
import json

from llm_parity.profiles import load_profile
from llm_parity.suite import load_suite_source, render_suite


def test_architecture_matches_the_seed_family(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    seed = {"model_type": "llama", "vocab_size": 128256, "rope_theta": 500000.0, "tie_word_embeddings": False}
    assert {key: config.get(key, config.get("rope_parameters", {}).get(key)) for key in seed} == seed
    assert config["num_attention_heads"] // config["num_key_value_heads"] == 4
    assert config["head_dim"] >= 32


def test_chat_template_and_end_of_turn_ids(tiny_model_dir):
    suite = render_suite(load_suite_source(), tiny_model_dir, default_max_tokens=8)
    assert suite["stop_ids"] == [128001, 128009]
    prompt = suite["prompts"][0]["prompt_ids"]
    assert prompt[:2] == [128000, 128006] and prompt[-4:] == [128006, 78191, 128007, 271]  # ...assistant header
    assert prompt.count(128000) == 1  # one BOS, not two


def test_rebuild_reuses_the_cached_model(tiny_model_dir):
    from llm_parity.tiny_model import build_tiny_model

    notes = []
    assert build_tiny_model(log=notes.append) == tiny_model_dir
    assert notes and "reusing" in notes[0]
    assert load_profile("tiny-llama").model["source"] == "tiny"


def test_the_model_trains_on_its_own_text_so_editing_a_suite_never_retrains_it(tiny_model_dir, tmp_path):
    from llm_parity.suite import DEFAULT_SUITE
    from llm_parity.tiny_model import TRAINING_TEXT, recipe_key

    assert TRAINING_TEXT.resolve() != DEFAULT_SUITE.resolve()
    assert tiny_model_dir.name.endswith(recipe_key(load_suite_source(TRAINING_TEXT)))
    edited = json.loads(DEFAULT_SUITE.read_text())
    edited["prompts"][0]["messages"][0]["content"] += " (edited)"
    assert recipe_key(edited) != recipe_key(load_suite_source(TRAINING_TEXT))  # the suite would have changed the key


def test_a_rebuild_says_which_part_of_the_recipe_changed(tmp_path):
    from llm_parity.tiny_model import RECIPE_FILE, TRAINING_TEXT, rebuild_reason, recipe

    wanted = recipe(load_suite_source(TRAINING_TEXT))
    assert "no tiny model" in rebuild_reason(tmp_path, wanted)
    older = tmp_path / "tiny-llama-3-0123456789abcdef"
    older.mkdir()
    (older / RECIPE_FILE).write_text(json.dumps({**wanted, "training": {**wanted["training"], "steps": 10},
                                                 "suite": "0" * 64}))
    assert rebuild_reason(tmp_path, wanted) == ("the recipe changed since tiny-llama-3-0123456789abcdef: "
                                                "training, training text")


def test_the_split_variant_is_another_model_and_the_default_stays_as_it_was(tiny_model_dir):
    from llm_parity.tiny_model import TRAINING, TRAINING_TEXT, folder_name, recipe, training_of

    source = load_suite_source(TRAINING_TEXT)
    assert recipe(source)["training"] == TRAINING and folder_name(source) == tiny_model_dir.name
    split = folder_name(source, "split")
    assert split.startswith("tiny-llama-3-split-") and split != tiny_model_dir.name
    assert training_of("split")["steps"] < TRAINING["steps"]
    assert load_profile("tiny-llama-split").model["tiny_variant"] == "split"
    try:
        training_of("flat")
    except ValueError as err:
        assert "choose one of default, split" in str(err)
    else:
        raise AssertionError("an unknown variant was accepted")
