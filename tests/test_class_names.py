"""Class lists shipped in sharding/data and the raw name -> text rule, checked on every shipped name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sharding.class_names import (
    DATASETS,
    RENAMES,
    STOP_WORDS,
    class_text,
    dataset_key,
    embedding_words,
    load_class_list,
    read_class_list,
)

# Rename keys that are not in the shipped lists on purpose: spellings seen in copies of the datasets.
ALIAS_KEYS = {"ucf101": {"HandStandPushups"}, "hmdb51": {"claping"}, "kinetics700": set()}


@pytest.mark.parametrize("dataset, count", [("kinetics700", 700), ("ucf101", 101), ("hmdb51", 51)])
def test_shipped_list_counts(dataset, count):
    names = load_class_list(dataset)
    assert len(names) == count
    assert len(set(names)) == count


def test_ucf101_is_in_classind_order():
    names = load_class_list("ucf101")
    assert names[0] == "ApplyEyeMakeup" and names[-1] == "YoYo"
    assert names[36] == "HandstandPushups"  # classInd.txt line "37 HandstandPushups"


def test_paper_exclusions_leave_664_kinetics_classes():
    kinetics = load_class_list("kinetics700")
    excluded = load_class_list("excluded_kinetics700_paper")
    assert len(excluded) == 36
    assert set(excluded) <= set(kinetics), set(excluded) - set(kinetics)
    assert len([n for n in kinetics if n not in set(excluded)]) == 664


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_name_maps_to_a_clean_unique_text(dataset):
    names = load_class_list(dataset)
    texts = [class_text(n, dataset) for n in names]
    for name, text in zip(names, texts):
        assert re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", text), (name, text)
    assert len(set(texts)) == len(texts)
    # Distinct after stop-word removal too, or two classes would share an embedding.
    assert len({tuple(embedding_words(t)) for t in texts}) == len(texts)


@pytest.mark.parametrize("dataset", DATASETS)
def test_rename_keys_are_real_names(dataset):
    # A key that matches no class would be a silent typo in the table.
    unknown = set(RENAMES[dataset]) - set(load_class_list(dataset)) - ALIAS_KEYS[dataset]
    assert not unknown


@pytest.mark.parametrize("name, dataset, text", [
    ("ApplyEyeMakeup", "ucf101", "apply eye makeup"),
    ("BlowDryHair", "ucf101", "blow dry hair"),
    ("CleanAndJerk", "ucf101", "weight lift"),
    ("WalkingWithDog", "ucf101", "walk dog"),
    ("PushUps", "ucf101", "pushups"),
    ("HandStandPushups", "ucf101", "handstand pushups"),
    ("YoYo", "ucf101", "yoyo"),
    ("brush_hair", "hmdb51", "brush hair"),
    ("claping", "hmdb51", "clapping"),
    ("clap", "hmdb51", "clap"),
    ("hugging (not baby)", "kinetics700", "hugging"),
    ("tying knot (not on a tie)", "kinetics700", "tying knot"),
    ("tying_knot_(not_on_a_tie)", "kinetics700", "tying knot"),  # folder-name form
    ("passing American football (in game)", "kinetics700", "passing american football in game"),
    ("curling (sport)", "kinetics700", "curling sport"),
    ("clean and jerk", "kinetics700", "weight lift"),
    ("clean_and_jerk", "kinetics700", "weight lift"),
    ("climbing a rope", "kinetics700", "climbing a rope"),
    ("ApplyEyeMakeup", None, "apply eye makeup"),  # no dataset: the generic rule
    ("CleanAndJerk", None, "clean and jerk"),
])
def test_spot_checks(name, dataset, text):
    assert class_text(name, dataset) == text


@pytest.mark.parametrize("raw, key", [("UCF-101", "ucf101"), ("hmdb51org", "hmdb51"), ("kinetics", "kinetics700"),
                                      ("Kinetics-700-2020", "kinetics700"), ("mydata", "mydata"), (None, None)])
def test_dataset_key(raw, key):
    assert dataset_key(raw) == key


def test_embedding_words_drop_stop_words():
    assert embedding_words("climbing a rope") == ["climbing", "rope"]
    assert embedding_words("climbing a rope", drop_stop_words=False) == ["climbing", "a", "rope"]
    assert embedding_words("the") == ["the"]  # only stop words: keep them rather than nothing
    assert "a" in STOP_WORDS
    with pytest.raises(ValueError, match="RENAMES"):
        embedding_words("  ")


def test_read_class_list_formats(tmp_path):
    plain = tmp_path / "list.txt"
    plain.write_text("# header\n\nplaying guitar\n  hugging (not baby)  \n# note\n")
    assert read_class_list(plain) == ["playing guitar", "hugging (not baby)"]
    indexed = tmp_path / "classInd.txt"
    indexed.write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n")
    assert read_class_list(indexed) == ["ApplyEyeMakeup", "ApplyLipstick"]
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"dup\.txt.*\['a'\]"):
        read_class_list(dup)


def test_unknown_shipped_list():
    with pytest.raises(ValueError, match="kinetics700"):
        load_class_list("kinetics400")


def test_sharding_class_names_imports_no_torch():
    # sharding is the bottom floor: importing it must not pull in torch or DALI.
    code = ("import sys, sharding.class_names; "
            "bad = [m for m in ('torch', 'nvidia.dali') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
