"""Raw class names (folder / CSV names) -> the text that gets embedded, and the shipped class lists.

One rule for all datasets: CamelCase is split into words, underscores become spaces, everything is
lower-cased, and "(not ...)" qualifiers and parentheses are dropped. A per-dataset rename table
(`RENAMES`) overrides the rule for names the rule handles badly: names whose words are missing from
word2vec's vocabulary (GoogleNews has no "and", "a", "of", "to"), misleading splits ("SkateBoarding")
and dataset typos ("tie dying"). `embedding_words` then splits a text into the words whose vectors are
averaged, dropping the paper's stop words.

The shipped lists live in `sharding/data/` (one raw name per line, '#' comments): `kinetics700`,
`ucf101` (classInd.txt order), `hmdb51`, and `excluded_kinetics700_paper` (the paper's 36 classes
removed from Kinetics-700 for being too close to a test class; 700 - 36 = 664 training classes).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from importlib import resources
from pathlib import Path

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# "(not on a tie)" or, in folder names that use underscores, "(not_on_a_tie)".
_NOT_QUALIFIER = re.compile(r"\(not[ _][^)]*\)")
# classInd.txt style: "37 HandstandPushups".
_INDEXED_LINE = re.compile(r"^\d+\s+(\S.*)$")

DATASETS = ("ucf101", "hmdb51", "kinetics700")
SHIPPED_LISTS = DATASETS + ("excluded_kinetics700_paper", "sun397")

# Words dropped before averaging: the list the paper's code (auxiliary_word2vec.py) removes from
# Kinetics names. Most are absent from GoogleNews word2vec, and in any vocabulary they pull every class
# embedding towards the same few frequent-word directions.
STOP_WORDS = frozenset({"a", "an", "the", "of", "and", "or", "at", "on", "in", "with", "do", "using"})

# Renames: raw name (exactly as the shipped list spells it) -> final text (lower-case words).
# The paper's code (github bbrattoli/ZeroShotVideoClassification, auxiliary/auxiliary_word2vec.py)
# renamed names by hand for GoogleNews word2vec after WordNet lemmatization; each entry below says
# whether it follows the paper and why. Names not listed use the generic rule (see the tests, which
# check every shipped name). The paper's code also lemmatizes verbs ("playing" -> "play"); here that
# is a separate, optional step at embedding time (`embedding_words(..., lemmatize=True)`,
# `verb_base_form`), so the texts below stay readable and the manifest does not depend on it.
RENAMES: dict[str, dict[str, str]] = {
    "ucf101": {
        # Paper: "clean" and "jerk" each mean something else and "and" is not in GoogleNews.
        "CleanAndJerk": "weight lift",
        # Paper: "with" is not in GoogleNews; the paper's lemmatized form.
        "WalkingWithDog": "walk dog",
        # Paper: one word, as it is written in English ("push ups" averages "push" and "ups").
        "PushUps": "pushups",
        # Paper: same reason as PushUps.
        "PullUps": "pullups",
        # Paper (for both spellings): classInd.txt says HandstandPushups, the video files say
        # v_HandStandPushups_...; without this a loader reading file names gets "hand stand pushups".
        "HandstandPushups": "handstand pushups",
        "HandStandPushups": "handstand pushups",
        # Paper: "yoyo" is the toy; the generic split gives "yo yo", a greeting twice.
        "YoYo": "yoyo",
        # NOT the paper ("Skyjet", a brand name): the class is riding a jet ski.
        "Skijet": "jet ski",
        # NOT the paper ("taichi"): the usual spelling, the same as Kinetics' "tai chi".
        "TaiChi": "tai chi",
        # NOT the paper (split gives "skate boarding"): the English word, as in Kinetics.
        "SkateBoarding": "skateboarding",
        # NOT the paper (split gives "sky diving"): the English word, as in Kinetics.
        "SkyDiving": "skydiving",
        # Paper renames NOT adopted, the generic rule is kept: ThrowDiscus ("throw disc": a discus is
        # not a disc; GoogleNews has "discus"), CuttingInKitchen ("cut kitchen": the rule plus the
        # stop words already give "cutting kitchen").
    },
    "hmdb51": {
        # Paper: a misspelled folder name seen in some HMDB51 copies; the official folder is "clap",
        # which the generic rule keeps (the paper kept it too).
        "claping": "clapping",
        # All other HMDB51 names follow the generic rule (underscores -> spaces), as in the paper,
        # including "flic flac" (a back handspring; both words are in GoogleNews and fastText).
    },
    "kinetics700": {
        # Paper: same rename as UCF101's CleanAndJerk, so the two classes embed identically.
        "clean and jerk": "weight lift",
        # Paper ("dance korean"): "gangnam" is missing from GoogleNews.
        "dancing gangnam style": "dancing korean pop style",
        # Paper ("bread crumb"): "breadcrumbing" is not a word in GoogleNews.
        "breading or breadcrumbing": "coating bread crumbs",
        # Paper ("face fall"): "faceplanting" is missing from GoogleNews.
        "faceplanting": "falling face first",
        # Paper ("skateboard electric"): "hoverboarding" is missing from GoogleNews.
        "hoverboarding": "riding electric skateboard",
        # Paper ("jumping dance"): "jumpstyle" is missing from GoogleNews.
        "jumpstyle dancing": "jump style dancing",
        # Paper ("dry hair"): "blowdrying" is missing; three words keep the meaning.
        "blowdrying hair": "blow drying hair",
        # Paper: GoogleNews is mostly American English.
        "making paper aeroplanes": "making paper airplanes",
        # Paper: GoogleNews is mostly American English.
        "mixing colours": "mixing colors",
        # Paper ("take picture"): "photobombing" is missing from GoogleNews.
        "photobombing": "photo bombing",
        # Paper ("play cube"): "rubiks" is missing from GoogleNews.
        "playing rubiks cube": "playing cube puzzle",
        # Paper ("pretend statue"): "to" is not in GoogleNews.
        "pretending to be a statue": "pretending statue",
        # Paper ("throwing ax"): the American spelling.
        "throwing axe": "throwing ax",
        # Not in the paper's table (its parser split this name at the apostrophe and kept "head"):
        # "person's" is not a word in most vocabularies.
        "massaging person's head": "massaging head",
        # Kinetics' typo: the craft is "tie dyeing" ("dying" is about death).
        "tie dying": "tie dyeing",
        # Not the paper: compound spellings split into common words (GoogleNews may lack the
        # compounds; fastText handles both).
        "jetskiing": "jet skiing",
        "skiing crosscountry": "skiing cross country",
        "poking bellybutton": "poking belly button",
        "barbequing": "barbecuing",
        "snowkiting": "snow kiting",
        # Paper renames NOT adopted (the generic rule already gives the same words): "hurling
        # (sport)", "passing American football (in game)" / "(not in game)", "petting animal (not
        # cat)", "punching person (boxing)", "shooting goal (soccer)", "tying knot (not on a tie)"
        # (the paper's "ty" is a typo), "using remote controller (not gaming)", "backflip (human)",
        # "throwing ball (not baseball or American football)", "curling (sport)", and "eating
        # doughnuts" (the paper's "eat bun" changes the food; GoogleNews has "doughnuts").
    },
    "sun397": {
        # SUN397 names are ClassName.txt lines without the letter folder ("/b/bakery/shop" ->
        # "bakery/shop", as the paper's code does); the generic rule turns "/" and "_" into spaces.
        # NOT the paper, which DROPPED these two classes (out of GoogleNews' vocabulary): we keep
        # all 397 classes and split the compounds into common words (fastText covers either form).
        "barndoor": "barn door",
        "thriftshop": "thrift shop",
        # Paper: "frontseat" is missing from GoogleNews. "backseat" (not renamed by the paper) is
        # split the same way so the two classes differ in one word.
        "car_interior/frontseat": "car interior front seat",
        "car_interior/backseat": "car interior back seat",
        # Paper: "needleleaf" is missing from GoogleNews.
        "forest/needleleaf": "forest needle leaf",
        # Paper ("theater indoor"): SUN's misspelling of "proscenium"; we keep the word, spelled right.
        "theater/indoor_procenium": "theater indoor proscenium",
        # Paper: "videostore" is missing from GoogleNews.
        "videostore": "video store",
        # Not the paper: SUN's misspelling of "kindergarten".
        "kindergarden_classroom": "kindergarten classroom",
        # Not the paper: SUN's "wave" is the sea's; as one word it is HMDB51's "wave" (a hand
        # gesture), which would make the two texts identical and trip the trainer's overlap check.
        "wave": "ocean wave",
    },
}


def dataset_key(dataset: str | None) -> str | None:
    """Normalise a dataset name to a key of `RENAMES` (`UCF-101` -> `ucf101`, `kinetics` -> `kinetics700`).

    Args:
        dataset: any spelling of a dataset name, or None.

    Returns:
        `ucf101`, `hmdb51`, `kinetics700`, the lower-cased name without separators for other
        datasets, or None.
    """
    if dataset is None:
        return None
    key = re.sub(r"[^a-z0-9]", "", dataset.lower())
    if key.startswith("kinetics"):
        # Kinetics-400/600 spell their shared classes like Kinetics-700, so its renames apply.
        return "kinetics700"
    if key.startswith("ucf"):
        return "ucf101"
    if key.startswith("hmdb"):
        return "hmdb51"
    return key


def class_text(name: str, dataset: str | None = None) -> str:
    """Turn a raw class name into the phrase whose word vectors are averaged.

    Args:
        name: the raw name as the dataset spells it (`ApplyEyeMakeup`, `brush_hair`,
            `hugging (not baby)`).
        dataset: the dataset's name (`ucf101`, `hmdb51`, `kinetics700`, ...); selects a rename
            table where one exists. Unknown names use the generic rule only.

    Returns:
        The lower-case phrase, e.g. `apply eye makeup`, `brush hair`, `hugging`; a renamed class
        gets its table entry (`CleanAndJerk` -> `weight lift`).
    """
    table = RENAMES.get(dataset_key(dataset) or "", {})
    for key in (name, name.replace("_", " ")):
        if key in table:
            return table[key]
    text = _NOT_QUALIFIER.sub(" ", name)
    text = text.replace("(", " ").replace(")", " ")
    text = _CAMEL.sub(" ", text)
    text = re.sub(r"[_\-/]+", " ", text)  # "/": SUN397's nested names (bakery/shop)
    return " ".join(text.lower().split())


def verb_base_form(word: str) -> str:
    """A word in its base form when it can be a verb, else unchanged (the paper's `verbs2basicform`).

    The paper's code asks WordNet whether the word has any verb sense and, if so, takes WordNet's
    verb lemma. WordNet's data is a separate download, so this uses lemminflect's own lexicon (it
    ships with the package) the same way: a word the lexicon lists with a verb reading becomes that
    verb's lemma; other words, and words it does not list at all, stay as they are. A form that is
    itself one of its verb lemmas stays too ("saw": see or saw), as with NLTK's WordNet lemmatizer,
    which takes the shortest candidate and, on a tie, the form itself. README ("Class text") lists
    where the two lexicons differ on the shipped class lists.

    >>> [verb_base_form(w) for w in ("playing", "dying", "dogs", "guitar", "saw", "skydiving")]
    ['play', 'die', 'dog', 'guitar', 'saw', 'skydiving']

    Args:
        word: one lower-case word.

    Returns:
        The verb lemma, or `word`.
    """
    from lemminflect import getAllLemmas  # imported here: loading its tables takes ~0.3 s

    lemmas = getAllLemmas(word).get("VERB")
    if not lemmas or word in lemmas:
        return word
    return lemmas[0]


def embedding_words(text: str, drop_stop_words: bool = True, lemmatize: bool = False) -> list[str]:
    """Split a class text into the words whose vectors are averaged.

    Args:
        text: a class text (`class_text`'s output), e.g. `climbing a rope`.
        drop_stop_words: drop `STOP_WORDS` (the paper's rule), unless that would leave no word.
        lemmatize: put every word that can be a verb in its base form (`verb_base_form`), as the
            paper's code does: `climbing a rope` -> `['climb', 'rope']`.

    Returns:
        The words, e.g. `['climbing', 'rope']`.

    Raises:
        ValueError: the text has no words.
    """
    words = text.split()
    if not words:
        raise ValueError(f"class text {text!r} has no words: fix the class name or its rename in "
                         "sharding/class_names.py (RENAMES)")
    if drop_stop_words:
        # A text made only of stop words keeps them rather than embedding nothing.
        words = [w for w in words if w not in STOP_WORDS] or words
    if lemmatize:
        words = [verb_base_form(w) for w in words]
    return words


def read_class_list(path: str | Path) -> list[str]:
    """Read a class-list file: one raw class name per line.

    Blank lines and lines starting with '#' are ignored; surrounding whitespace is stripped. A
    classInd.txt-style file (every line `INDEX NAME`, e.g. `1 ApplyEyeMakeup`) is accepted too and
    its indices are dropped (no Kinetics/UCF101/HMDB51 class name starts with a digit).

    Args:
        path: the file.

    Returns:
        The names in file order.

    Raises:
        ValueError: the file names a class twice.
    """
    path = Path(path)
    # utf-8-sig: a BOM would otherwise stick to the first name; NFC: the same name typed on
    # macOS (NFD) and elsewhere compares equal
    text = unicodedata.normalize("NFC", path.read_text(encoding="utf-8-sig"))
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    indexed = [_INDEXED_LINE.match(n) for n in names]
    if names and all(indexed):
        names = [m.group(1).strip() for m in indexed]
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)
    if dupes:
        raise ValueError(f"{path}: class names listed more than once: {dupes}; remove the duplicates")
    return names


def load_class_list(dataset: str) -> list[str]:
    """Load a class list shipped in `sharding/data/`.

    Args:
        dataset: `ucf101` (101 names, classInd.txt order), `hmdb51` (51), `kinetics700` (700) or
            `excluded_kinetics700_paper` (the paper's 36 excluded Kinetics-700 classes).

    Returns:
        The raw class names in file order.

    Raises:
        ValueError: no such shipped list.
    """
    if dataset not in SHIPPED_LISTS:
        raise ValueError(f"no shipped class list {dataset!r}; choose one of {list(SHIPPED_LISTS)} "
                         "or pass a class-list file")
    with resources.as_file(resources.files("sharding") / "data" / f"{dataset}.txt") as path:
        return read_class_list(path)
