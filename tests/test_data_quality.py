"""Language ID and the trained quality classifier in the data build (data.filters.language,
data.filters.quality, `llmtrain data train-classifier`): the classifier separates a planted
task, the filters keep the planted documents, counts reach the manifest and the report, and
bad settings get their messages. The same steps on Ray: tests/test_data_ray.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from llmtrain.cli import main
from llmtrain.data_pipeline.build import build_data
from llmtrain.data_pipeline.clean import clean_text
from llmtrain.data_pipeline.config import CleanSection, LanguageFilter
from llmtrain.data_pipeline.quality import (
    auc,
    distribution,
    histogram,
    top_fraction_drops,
    train_classifier,
)
from llmtrain.data_pipeline.scan import ScanOutput
from llmtrain.data_pipeline.stdlib_corpus import reference_documents
from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.recipe import validate_recipe
from tests.data_support import data_recipe, english_documents, write_jsonl

GERMAN = (
    "der die das und ist nicht mit auf für von sich dem den ein eine auch wird werden "
    "haben nach bei über unter zwischen Haus Stadt Fluss Garten Fenster Brief Markt Winter "
    "Sommer Schloss Wald Dorf Brücke Arzt Lehrer schreibt liest findet baut öffnet trägt "
    "Geschichte Wissenschaft Musik Theater Bahnhof Maschine Bibliothek schnell langsam"
).split()
FRENCH = (
    "le la les et est pas avec sur pour de des une un aussi sera sont avoir après chez "
    "sous entre maison ville rivière jardin fenêtre lettre marché hiver été château forêt "
    "village pont médecin professeur écrit lit trouve construit ouvre porte histoire "
    "science musique théâtre gare machine bibliothèque rapide lentement"
).split()

SPAM = (
    "buy cheap discount offer free click here now best price deal casino bonus win money "
    "fast loan credit pills order online shipping sale limited exclusive subscribe today "
    "the and to of with"
).split()


def prose(words: list[str], count: int, seed: int) -> list[str]:
    """Documents of sentences drawn from `words` (enough of a language for a detector)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        sentences = [
            " ".join(words[int(i)] for i in rng.integers(len(words), size=10)).capitalize() + "."
            for _ in range(int(rng.integers(8, 12)))
        ]
        out.append(" ".join(sentences))
    return out


def test_language_filter_keeps_the_listed_languages_and_counts_the_rest(
    tmp_path, tiny_tokenizer_dir
):
    english = english_documents(12, seed=1)
    german, french = prose(GERMAN, 5, seed=2), prose(FRENCH, 4, seed=3)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", english[:6] + german + english[6:] + french)
    only_german = write_jsonl(tmp_path / "de.jsonl", prose(GERMAN, 6, seed=4))
    raw = data_recipe(
        tmp_path,
        tiny_tokenizer_dir,
        [
            {"name": "mixed", "paths": [str(mixed)]},
            {  # a per-source override: this one keeps German
                "name": "german",
                "paths": [str(only_german)],
                "filters": {"language": {"languages": ["de"]}},
            },
        ],
        filters={
            "gopher_quality": {"min_stop_words": 0},
            "language": {"enabled": True, "languages": ["en"], "min_score": 0.5},
        },
        keep_intermediate=True,
    )
    out = build_data(validate_recipe(raw))
    manifest = json.loads((out / "manifest.json").read_text())
    mixed_entry, german_entry = manifest["sources"]
    assert mixed_entry["languages"] == {"en": 12, "de": 5, "fr": 4}
    assert mixed_entry["dropped"] == {"language": 9}
    assert mixed_entry["dropped_detail"] == {"language.other_language": 9}
    assert mixed_entry["documents"] == 12
    assert german_entry["languages"] == {"de": 6} and german_entry["documents"] == 6
    # the language and its score are per-document statistics of the scan
    scan = ScanOutput(out / "work" / "scan" / "mixed" / "00000")
    assert scan.array("language").tolist() == [b"en"] * 12
    assert (scan.array("language_score") >= 0.5).all()
    assert scan.texts(np.arange(12)) == [clean_text(t, CleanSection()) for t in english]
    report = (out / "report.md").read_text()
    assert "## Languages" in report and "- mixed: en 12, de 5, fr 4" in report


def prose_share(text: str) -> float:
    """Share of a text's words that are plain words (the reference also holds grammar and
    code listings)."""
    words = text.split()
    return sum(w.strip(".,;:()\"'").isalpha() for w in words) / len(words)


def shuffled(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


BOILERPLATE = (
    "Home | About us | Contact | Privacy policy | Terms of use | Cookie settings | Sign in | "
    "Subscribe to our newsletter | Share on Facebook | Tweet | Related posts | Read more | "
    "Copyright {year} All rights reserved | Page {page} of {pages} | Next | Previous"
)


def planted_task(tmp: Path) -> dict[str, list[str]]:
    """Positives: the Python language reference shipped with the stdlib; negatives: its
    documents with their words shuffled, and navigation boilerplate. Training and build documents are disjoint."""
    docs = [d for d in reference_documents(min_words=150) if prose_share(d) >= 0.75]
    rng = np.random.default_rng(0)
    junk = [
        " ".join(BOILERPLATE.format(year=2000 + i % 25, page=p, pages=9) for p in range(1 + i % 4))
        for i in range(40)
    ]
    # shuffled negatives come from other documents than the positives (the same words in
    # both classes would teach the classifier to ignore them)
    train_docs, build_docs = docs[: len(docs) - 40], docs[len(docs) - 40 :]
    negatives = [shuffled(d, rng) for d in train_docs[1::2]] + junk[:30]
    bad = [shuffled(d, rng) for d in build_docs[30:]] + junk[30:]
    build_docs = build_docs[:30]
    write_jsonl(tmp / "positive.jsonl", train_docs[::2])
    write_jsonl(tmp / "negative.jsonl", negatives)
    return {"good": build_docs, "bad": bad}


def classifier_recipe(tmp: Path, tokenizer_dir: Path, paths: list[Path], quality: dict) -> dict:
    return data_recipe(
        tmp,
        tokenizer_dir,
        [{"name": "web", "paths": [str(p) for p in paths]}],
        filters={
            "length": {"min_words": 10},
            "gopher_quality": {"enabled": False},
            "repetition": {"enabled": False},
            "quality": {"enabled": True, **quality},
        },
        dedup={"near": {"enabled": False}},
        validation={"fraction": 0},
        keep_intermediate=True,
        classifier={
            "positive": [str(tmp / "positive.jsonl")],
            "negative": [str(tmp / "negative.jsonl")],
            "dim": 16,
            "bucket": 20000,
            "epoch": 50,
            "lr": 0.5,
        },
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer_dir):
    """The planted task's classifier, trained once (`llmtrain data train-classifier`)."""
    tmp = tmp_path_factory.mktemp("quality")
    planted = planted_task(tmp)
    recipe_file = tmp / "recipe.yaml"
    raw = classifier_recipe(tmp, tiny_tokenizer_dir, [tmp / "positive.jsonl"], {"threshold": 0.5})
    recipe_file.write_text(json.dumps(raw), encoding="utf-8")
    main(["data", "train-classifier", str(recipe_file)])
    return tmp, planted


def test_classifier_separates_held_out_documents(trained, capsys):
    tmp, _ = trained
    info = json.loads((tmp / "out" / "quality_classifier" / "classifier.json").read_text())
    held_out = info["held_out"]
    assert held_out["auc"] >= 0.95
    assert held_out["precision"] >= 0.8 and held_out["recall"] >= 0.8
    assert info["documents"]["positive"]["held_out"] == held_out["positive"] > 0
    assert info["fasttext"]["dim"] == 16 and info["settings"]["seed"] == 3
    assert (tmp / "out" / "quality_classifier" / "model.bin").is_file()


def test_threshold_and_top_fraction_keep_the_planted_good_documents(
    trained, tiny_tokenizer_dir, tmp_path
):
    tmp, planted = trained
    corpus = write_jsonl(tmp_path / "web.jsonl", planted["bad"][:10] + planted["good"])
    junk = write_jsonl(tmp_path / "junk.jsonl", planted["bad"][10:])
    model = str(tmp / "out" / "quality_classifier")
    good = {clean_text(t, CleanSection()) for t in planted["good"]}
    for number, rule in enumerate([{"threshold": 0.25}, {"top_fraction": 0.6}]):
        raw = classifier_recipe(tmp, tiny_tokenizer_dir, [corpus, junk], {"model": model, **rule})
        raw["output_dir"] = str(tmp_path / f"build-{number}")
        out = build_data(validate_recipe(raw))
        entry = json.loads((out / "manifest.json").read_text())["sources"][0]
        assert entry["documents"] == 30 and entry["quality"]["dropped"] == 20
        assert entry["quality"]["scored"] == 50
        assert sum(entry["quality"]["histogram"].values()) == 50
        kept_texts = set()
        status = np.load(out / "work" / "dedup" / "status.npy")
        start = 0
        for name in ("00000", "00001"):
            scan = ScanOutput(out / "work" / "scan" / "web" / name)
            part = status[start : start + scan.documents]
            start += scan.documents
            kept_texts |= set(scan.texts(np.flatnonzero(part == 0)))
        assert kept_texts == good
        report = (out / "report.md").read_text()
        assert "## Quality classifier" in report
    # threshold: dropped in the scan; top fraction: in the dedup step
    assert entry["dropped"] == {} and entry["after_filters"] == 50


def test_score_statistics():
    scores = np.array([0.2, 0.9, 0.9, 0.1, 0.5], dtype=np.float32)
    assert top_fraction_drops(scores, np.ones(5, bool), 0.4).tolist() == [0, 3, 4]
    kept = np.array([True, False, True, True, True])
    assert top_fraction_drops(scores, kept, 0.5).tolist() == [0, 3]  # 2 of the 4 kept
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    counts = histogram(np.array([0.0, 0.05, 0.5, 0.999, 1.0]))
    assert counts.sum() == 5 and counts[0] == counts[5] == counts[50] == 1 and counts[99] == 2
    view = distribution(counts.tolist())
    assert view["quantiles"]["p50"] == 0.51 and view["histogram"]["0.9-1.0"] == 2


@pytest.mark.parametrize(
    ("quality", "message"),
    [
        (
            {"enabled": True, "threshold": 1.5},
            "data.filters.quality.threshold: expected less than or equal to 1, got 1.5",
        ),
        (
            {"enabled": True, "threshold": 0.5, "top_fraction": 0.3},
            "data.filters.quality: set one of threshold and top_fraction (both is set); a "
            "source that overrides one sets the other to null",
        ),
    ],
)
def test_bad_quality_settings(tmp_path, quality, message):
    raw = data_recipe(tmp_path, tmp_path, [{"name": "web", "paths": ["x.jsonl"]}])
    raw["data"]["filters"] = {"quality": quality}
    with pytest.raises(RecipeError) as error:
        validate_recipe(raw)
    assert str(error.value) == message


def test_missing_model_directory_names_train_classifier(tmp_path, tiny_tokenizer_dir):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(3, seed=1))
    raw = data_recipe(
        tmp_path,
        tiny_tokenizer_dir,
        [{"name": "web", "paths": [str(corpus)]}],
        filters={"quality": {"enabled": True, "threshold": 0.5}},
    )
    with pytest.raises(StageInputError) as error:
        build_data(validate_recipe(raw))
    assert str(error.value) == (
        f"data.filters.quality.model: {tmp_path / 'out' / 'quality_classifier'} holds no "
        "trained classifier (model.bin missing); train one with `llmtrain data "
        "train-classifier RECIPE` (data.classifier names its positive and negative files), "
        "or set data.filters.quality.model"
    )


def test_train_classifier_without_a_classifier_section(tmp_path):
    raw = data_recipe(tmp_path, tmp_path, [{"name": "web", "paths": ["x.jsonl"]}])
    with pytest.raises(StageInputError) as error:
        train_classifier(validate_recipe(raw))
    assert str(error.value).startswith(
        "llmtrain data train-classifier: the recipe has no data.classifier section"
    )


def test_unknown_language_code_names_the_key(tmp_path, tiny_tokenizer_dir):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(3, seed=1))
    raw = data_recipe(
        tmp_path,
        tiny_tokenizer_dir,
        [{"name": "web", "paths": [str(corpus)]}],
        filters={"language": {"enabled": True, "languages": ["en", "english"]}},
    )
    with pytest.raises(RecipeError) as error:
        build_data(validate_recipe(raw))
    assert str(error.value) == (
        "data.filters.language.languages: 'english' is not a language the detector knows; "
        "use ISO 639-1 codes such as en, de, fr"
    )


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    from llmtrain.data_pipeline import langid, quality

    monkeypatch.setitem(sys.modules, "lingua", None)  # import lingua raises ImportError
    monkeypatch.setitem(sys.modules, "fasttext", None)
    langid._detector.cache_clear()
    with pytest.raises(RecipeError) as error:
        langid.detector_for(LanguageFilter(enabled=True))
    assert str(error.value) == (
        "data.filters.language needs lingua-language-detector; install it with "
        "`pip install 'llmtrain[data]'`"
    )
    for name in ("model.bin", "classifier.json"):
        (tmp_path / name).write_text("")
    with pytest.raises(RecipeError) as error:
        quality.QualityModel.load(tmp_path)
    assert str(error.value) == (
        "data.filters.quality needs fasttext-wheel; install it with `pip install 'llmtrain[data]'`"
    )
    langid._detector.cache_clear()


def test_a_fasttext_language_model_given_by_path(tmp_path, tiny_tokenizer_dir):
    """The fastText path of the language filter (lid.176 / GlotLID files): here a two-label
    model trained on the spot, its labels used as the language codes."""
    import fasttext

    lines = [f"__label__eng_Latn {t}" for t in english_documents(60, seed=5)]
    lines += [f"__label__deu_Latn {t}" for t in prose(GERMAN, 60, seed=6)]
    (tmp_path / "lid.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(
        input=str(tmp_path / "lid.txt"), epoch=10, lr=0.5, dim=8, thread=1, seed=1, verbose=0
    )
    model.save_model(str(tmp_path / "lid.bin"))
    corpus = write_jsonl(
        tmp_path / "web.jsonl", english_documents(5, seed=7) + prose(GERMAN, 3, seed=8)
    )
    language = {"enabled": True, "model": str(tmp_path / "lid.bin"), "min_score": 0.5}
    raw = data_recipe(
        tmp_path,
        tiny_tokenizer_dir,
        [{"name": "web", "paths": [str(corpus)]}],
        filters={"language": {**language, "languages": ["eng_Latn"]}},
    )
    out = build_data(validate_recipe(raw))
    entry = json.loads((out / "manifest.json").read_text())["sources"][0]
    assert entry["languages"] == {"eng_Latn": 5, "deu_Latn": 3} and entry["documents"] == 5
    raw["data"]["filters"]["language"]["languages"] = ["en"]
    raw["output_dir"] = str(tmp_path / "other")
    with pytest.raises(RecipeError) as error:
        build_data(validate_recipe(raw))
    assert str(error.value) == (
        "data.filters.language.languages: 'en' is not a language the detector knows; use the "
        f"labels of {tmp_path / 'lid.bin'} without __label__ (deu_Latn, eng_Latn)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["data", "train-classifier"],
            "llmtrain data train-classifier needs a recipe: RECIPE is missing",
        ),
        (
            ["data", "a.yaml", "b.yaml"],
            "llmtrain data takes one recipe, got a.yaml and b.yaml; to train the quality "
            "classifier run `llmtrain data train-classifier RECIPE`",
        ),
    ],
)
def test_data_command_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"llmtrain: error: {message}"


def test_train_classifier_names_files_that_match_nothing(tmp_path):
    raw = data_recipe(tmp_path, tmp_path, [{"name": "web", "paths": ["x.jsonl"]}])
    raw["data"]["classifier"] = {"positive": [str(tmp_path / "good-*.jsonl")], "negative": ["n"]}
    with pytest.raises(InputDataError) as error:
        train_classifier(validate_recipe(raw))
    assert str(error.value) == (
        f"data.classifier.positive: {tmp_path / 'good-*.jsonl'} matches no file"
    )


# ---------------------------------------------------------------------------------------------
# PII, URL lists, lm-eval tasks as decontamination sources

PLANTED_PII = {
    "email": ["john.doe@example.com", "x+tag@mail.co.uk", "admin@[192.168.0.1]"],
    "ip": ["8.8.8.8", "1.2.3.4", "2a00:1450:4007:80e::200e"],
    "phone": [
        "+44 20 7946 0958",
        "(555) 123-4567",
        "555-123-4567",
        "1-800-555-0199",
        "+14155552671",
    ],
}
LOOK_ALIKES = [
    "Python 3.11.4",  # versions: three parts, a v prefix, five parts
    "release v1.2.3.4",
    "build 1.2.3.4.5",
    "os.path.join and a.b.c.d",
    "on 2023-01-15, 15.01.2023 or 01/15/2023",  # dates
    "ISBN 978-3-16-148410-0 and 0-306-40615-2 and 9783161484100",
    "pi is 3.14159265, +3.14159265 and -12.5e-3 and 1234567.89",
    "private 192.168.1.10, loopback 127.0.0.1 and ::1, docs 2001:db8::1",
    "C++ std::vector and a::b at 12:30:45, MAC 00:1a:2b:3c:4d:5e",
    "port 256.1.1.1 and 01.02.03.04, pages 100-200, code 123456789012",
]


def test_pii_replaces_planted_pii_and_keeps_look_alikes():
    import collections

    from llmtrain.data_pipeline.config import PiiSection
    from llmtrain.data_pipeline.pii import pii_replacer

    replacer = pii_replacer(PiiSection(enabled=True))
    placeholders = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}
    for kind, values in PLANTED_PII.items():
        for value in values:
            counts: collections.Counter[str] = collections.Counter()
            text = f"Write to {value}, today."
            assert replacer.replace(text, counts) == f"Write to {placeholders[kind]}, today."
            assert counts == {kind: 1}, value
    counts = collections.Counter()
    for text in LOOK_ALIKES:
        assert replacer.replace(text, counts) == text
    assert counts == {}
    # each kind can be turned off; private addresses too; placeholders are settings
    settings = PiiSection(enabled=True, ip=False, email_placeholder="[mail]")
    counts = collections.Counter()
    text = "a@b.org at 8.8.8.8 or +44 20 7946 0958"
    assert pii_replacer(settings).replace(text, counts) == "[mail] at 8.8.8.8 or <PHONE>"
    everything = pii_replacer(PiiSection(enabled=True, public_ips_only=False))
    assert everything.replace("lan 192.168.1.10 ::1", counts) == "lan <IP> ::1"
    assert pii_replacer(PiiSection(enabled=True, email=False, ip=False, phone=False)) is None


def test_url_lists_match_domains_and_their_subdomains(tmp_path):
    from llmtrain.data_pipeline.config import UrlFilterSection
    from llmtrain.data_pipeline.urls import UrlFilter, read_domains, url_domain

    (tmp_path / "spam.txt").write_text("# spam\nSpam.example  # trailing comment\n\n*.ads.net\n")
    (tmp_path / "more.txt").write_text("spam.example\nbad.org\n")
    (tmp_path / "allow.txt").write_text("good.org\nspam.example\n")
    assert read_domains(tmp_path / "spam.txt") == ["spam.example", "ads.net"]
    assert url_domain("https://User@WWW.Good.org:8080/a?b") == "www.good.org"
    assert url_domain("good.org/page") == "good.org" and url_domain("") is None
    lists = UrlFilter(
        UrlFilterSection(
            block_lists=[tmp_path / "spam.txt", tmp_path / "more.txt"],
            allow_lists=[tmp_path / "allow.txt"],
        )
    )
    spam = f"blocked:{tmp_path / 'spam.txt'}"
    assert lists.verdict("http://a.b.spam.example/x") == (False, spam)  # the first list
    assert lists.verdict("http://bad.org") == (False, f"blocked:{tmp_path / 'more.txt'}")
    assert lists.verdict("http://x.ads.net") == (False, spam)
    assert lists.verdict("http://notspam.example") == (False, "not_allowed")
    assert lists.verdict("https://docs.good.org/") == (True, None)
    assert lists.verdict(None) == (False, "missing_url")
    keep = UrlFilter(UrlFilterSection(block_lists=[tmp_path / "more.txt"], missing_url="keep"))
    assert keep.verdict(42) == (True, "missing_url") and keep.verdict("x.org") == (True, None)


def write_eval_task(directory: Path, name: str, rows: list[dict]) -> Path:
    """A custom lm-eval task whose dataset is a local json file (loads offline)."""
    data = write_jsonl(directory / f"{name}.jsonl", [])
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: exact_match\n",
        encoding="utf-8",
    )
    return directory


def eval_task_rows(seed: int) -> list[dict]:
    """Questions and answers of a planted benchmark (answers long enough to match alone)."""
    texts = english_documents(4, seed=seed, words=(20, 24))
    return [{"question": t, "answer": a} for t, a in zip(texts[:2], texts[2:], strict=True)]


def test_pii_url_lists_and_a_benchmark_task_in_a_local_build(tmp_path, tiny_tokenizer_dir):
    rows = eval_task_rows(seed=70)
    tasks = write_eval_task(tmp_path / "tasks", "planted_qa", rows)
    docs = english_documents(9, seed=71)
    docs[0] += " Mail john.doe@example.com or call +44 20 7946 0958 from 8.8.8.8."
    docs[1] += " Python 3.11.4 runs os.path.join on 192.168.1.10."  # look-alikes only
    docs[5] += " " + rows[1]["answer"]  # quotes the benchmark's answer
    urls = ["https://www.good.org/a", "http://good.org/b", "https://ads.spam.example/c"]
    urls += [None, "https://good.org/d", "https://good.org/e", "http://other.net/f"]
    urls += ["https://good.org/g", "https://good.org/h"]
    web = tmp_path / "web.jsonl"
    web.write_text(
        "".join(
            json.dumps({"text": t, **({"url": u} if u else {})}) + "\n"
            for t, u in zip(docs, urls, strict=True)
        )
    )
    (tmp_path / "block.txt").write_text("spam.example\n")
    (tmp_path / "allow.txt").write_text("# ours\ngood.org\n")
    books = write_jsonl(tmp_path / "books.jsonl", english_documents(3, seed=72))
    books.write_text(books.read_text() + json.dumps({"text": docs[0] + " again"}) + "\n")
    raw = data_recipe(
        tmp_path,
        tiny_tokenizer_dir,
        [
            {"name": "web", "paths": [str(web)], "url_field": "url"},
            {"name": "books", "paths": [str(books)], "pii": {"email": False}},
        ],
        pii={"enabled": True},
        url_filter={
            "block_lists": [str(tmp_path / "block.txt")],
            "allow_lists": [str(tmp_path / "allow.txt")],
        },
        decontamination={"tasks": ["planted_qa"], "include_path": str(tasks)},
        dedup={"near": {"enabled": False}},
        validation={"fraction": 0},
        keep_intermediate=True,
    )
    out = build_data(validate_recipe(raw))
    manifest = json.loads((out / "manifest.json").read_text())
    web_entry, books_entry = manifest["sources"]
    assert web_entry["url_filter"] == {
        "checked": 9,
        "missing_url": 1,
        "missing_url_kept": False,
        "blocked": {str(tmp_path / "block.txt"): 1},
        "not_allowed": 1,
    }
    assert web_entry["dropped_detail"] == {
        "url.blocked": 1,
        "url.missing_url": 1,
        "url.not_allowed": 1,
    }
    assert web_entry["pii"] == {"email": 1, "ip": 1, "phone": 1, "documents": 1}
    assert books_entry["pii"] == {"email": 0, "ip": 1, "phone": 1, "documents": 1}
    assert web_entry["decontaminated"] == {"planted_qa": 1}
    assert web_entry["documents"] == 5 and books_entry["documents"] == 4
    assert manifest["decontamination"]["tasks"] == {"planted_qa": 2}
    texts = ScanOutput(out / "work" / "scan" / "web" / "00000").texts(np.arange(6))
    assert texts[0].endswith(" Mail <EMAIL> or call <PHONE> from <IP>.")
    assert texts[1] == clean_text(docs[1], CleanSection())
    book = ScanOutput(out / "work" / "scan" / "books" / "00000").texts(np.arange(4))[3]
    assert book.endswith(" Mail john.doe@example.com or call <PHONE> from <IP>. again")
    report = (out / "report.md").read_text()
    assert "## PII" in report and "| web | 1 | 1 | 1 | 1 |" in report
    assert "## URL lists" in report and "| web | 9 | 1 (dropped) | 1 |" in report
    assert "- web: `planted_qa` 1" in report


def test_bad_url_and_task_settings_name_the_key(tmp_path, tiny_tokenizer_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text(" ".join(english_documents(1, seed=1)))
    web = write_jsonl(tmp_path / "web.jsonl", english_documents(2, seed=2))

    def error_of(sources: list[dict], **data) -> str:
        raw = data_recipe(tmp_path, tiny_tokenizer_dir, sources, **data)
        raw["output_dir"] = str(tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}")
        with pytest.raises(RecipeError) as error:
            build_data(validate_recipe(raw))
        return str(error.value)

    assert error_of([{"name": "notes", "paths": [str(notes)], "url_field": "url"}]) == (
        f"data.sources[0].url_field: {notes} is plain text, which has no fields; remove "
        "url_field from source 'notes', or give it jsonl, parquet or datasets files whose "
        "records hold the URL"
    )
    lists = {"block_lists": [str(tmp_path / "missing.txt")]}
    assert error_of([{"name": "web", "paths": [str(web)], "url_field": "u"}], url_filter=lists) == (
        f"data.url_filter.block_lists[0]: file not found: {tmp_path / 'missing.txt'}"
    )
    (tmp_path / "block.txt").write_text("x.org\n")
    lists = {"block_lists": [str(tmp_path / "block.txt")]}
    assert error_of([{"name": "web", "paths": [str(web)]}], url_filter=lists) == (
        "data.url_filter: no source sets url_field, so the lists would filter nothing; set "
        "data.sources[N].url_field to the record field that holds the URL"
    )
    tasks = write_eval_task(tmp_path / "tasks", "planted_qa", eval_task_rows(seed=3))
    (tasks / "planted_qa.jsonl").unlink()  # its data is gone: it cannot load
    source = [{"name": "web", "paths": [str(web)]}]
    message = error_of(
        source, decontamination={"tasks": ["planted_qa"], "include_path": str(tasks)}
    )
    assert message.startswith(
        "data.decontamination.tasks: planted_qa needs the files of its dataset (json, "
        "dataset_kwargs.data_files), which could not be loaded (FileNotFoundError: "
    )
    assert message.endswith(
        "check the data_files of its yaml, or give the eval text as data.decontamination.eval_files"
    )
