"""Recipe section `data:` of `llmtrain data`: sources, cleaning, filters, dedup, mixture.

    data:
      tokenizer: runs/demo/tokenizer          # default: <output_dir>/tokenizer
      seq_len: 2048
      target_tokens: 2.0e9                    # tokens pretraining will read (default: all)
      sources:
        - {name: web, paths: [web/*.jsonl.zst], weight: 0.7}
        - {name: code, paths: [code/*.parquet], text_field: content, weight: 0.3,
           filters: {gopher_quality: {enabled: false}}}
      dedup: {near: {bands: 14, rows: 8}}
      decontamination: {eval_files: [evals/*.jsonl]}

A source's `clean:` and `filters:` override the section-wide ones key by key: only the keys
the source sets differ. Light module (no numpy, torch): the recipe imports it for the schema.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from llmtrain.schema import InputGlob, InputPath, OutputPath, Section

Normalization = Literal["NFC", "NFKC", "NFD", "NFKD"]
OnError = Literal["raise", "skip"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CleanSection(Section):
    """Text cleaning, applied to every document before filters and dedup."""

    unicode_normalization: Normalization | None = "NFC"
    """Unicode normal form (NFKC also folds compatibility characters such as full-width
    letters and ligatures); null: leave as is."""
    remove_control_characters: bool = True
    """Drop control characters (C0/C1 except tab and newline) and the byte-order mark."""
    normalize_whitespace: bool = True
    """CRLF/CR to LF, trailing spaces stripped from each line, runs of 3+ newlines made 2,
    leading and trailing blank lines removed (indentation is kept)."""


class LengthFilter(Section):
    """Drop documents outside these sizes (words are whitespace-separated)."""

    enabled: bool = True
    min_chars: int = Field(default=0, ge=0)
    max_chars: int | None = Field(default=None, gt=0)
    min_words: int = Field(default=50, ge=0)
    """Gopher's minimum; lower it for short documents (chat turns, arithmetic)."""
    max_words: int | None = Field(default=100_000, gt=0)

    @model_validator(mode="after")
    def _ranges(self) -> LengthFilter:
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            top = getattr(self, high)
            if top is not None and getattr(self, low) > top:
                raise ValueError(f"{low} {getattr(self, low)} is above {high} {top}; swap them")
        return self


class GopherQualityFilter(Section):
    """Gopher quality heuristics (Rae et al. 2021, appendix A); defaults are the paper's."""

    enabled: bool = True
    min_mean_word_length: float = 3.0
    """Mean length of words (punctuation-only words not counted)."""
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    """Hashes per word, and ellipses per word (each checked on its own)."""
    max_bullet_lines_ratio: float = 0.9
    """Share of lines that start with a bullet point."""
    max_ellipsis_lines_ratio: float = 0.3
    """Share of lines that end with an ellipsis."""
    min_alpha_words_ratio: float = 0.8
    """Share of words that contain at least one letter."""
    min_stop_words: int = 2
    """English stop words (the, be, to, of, and, that, have, with) a document must contain;
    0 to turn this check off for other languages."""


class RepetitionFilter(Section):
    """Gopher repetition heuristics: duplicated lines, paragraphs and n-grams."""

    enabled: bool = True
    max_duplicate_lines_ratio: float = 0.3
    """Share of lines that repeat an earlier line."""
    max_duplicate_lines_chars_ratio: float = 0.2
    """Share of characters in lines that repeat an earlier line."""
    max_duplicate_paragraphs_ratio: float = 0.3
    max_duplicate_paragraphs_chars_ratio: float = 0.2
    top_ngram_chars_ratio: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
    """For n-grams of n words: the most frequent n-gram's share of the characters."""
    duplicate_ngram_chars_ratio: dict[int, float] = {
        5: 0.15,
        6: 0.14,
        7: 0.13,
        8: 0.12,
        9: 0.11,
        10: 0.10,
    }
    """For n-grams of n words: share of characters in words covered by repeated n-grams."""

    @field_validator("top_ngram_chars_ratio", "duplicate_ngram_chars_ratio")
    @classmethod
    def _positive_n(cls, value: dict[int, float]) -> dict[int, float]:
        bad = [n for n in value if n < 1]
        if bad:
            raise ValueError(f"n-gram sizes must be at least 1, got {bad}")
        return value


class LanguageFilter(Section):
    """Language identification (`data_pipeline/langid.py`): keep documents whose detected
    language is one of `languages` with a score of at least `min_score`. Needs
    `pip install llmtrain[data]`."""

    enabled: bool = False
    languages: list[str] = Field(default=["en"], min_length=1)
    """Languages to keep, as the detector names them: ISO 639-1 codes (`en`, `de`) for lingua;
    the model's labels without `__label__` for a fastText model (`en` for lid.176,
    `eng_Latn` for GlotLID)."""
    min_score: float = Field(default=0.65, ge=0, le=1)
    """Lowest score of the detected language (lingua's confidence, fastText's probability)."""
    model: InputPath | None = None
    """A fastText language-ID model file (lid.176.bin, GlotLID's model.bin); null: lingua,
    whose models ship inside its package (works offline)."""
    low_accuracy: bool = True
    """lingua's low-accuracy mode (trigrams only): ~100 MB per worker instead of ~1 GB; on
    documents both modes answer alike, the mode matters for texts of a few words."""


class QualityFilter(Section):
    """A trained quality classifier (`llmtrain data train-classifier`, DCLM-style fastText):
    keep documents whose score is at least `threshold`, or the `top_fraction` of each
    source's documents by score. Needs `pip install llmtrain[data]`."""

    enabled: bool = False
    model: OutputPath | None = None
    """The classifier directory written by `llmtrain data train-classifier`; default:
    <output_dir>/quality_classifier."""
    threshold: float | None = Field(default=None, ge=0, le=1)
    """Keep documents whose score (the classifier's probability of the positive class) is at
    least this."""
    top_fraction: float | None = Field(default=None, gt=0, le=1)
    """Keep this share of each source's documents (those left after dedup and
    decontamination), the highest-scoring; ties go to the earlier document."""

    @model_validator(mode="after")
    def _one_rule(self) -> QualityFilter:
        if self.enabled and (self.threshold is None) == (self.top_fraction is None):
            given = "both" if self.threshold is not None else "neither"
            raise ValueError(
                f"set one of threshold and top_fraction ({given} is set); a source "
                "that overrides one sets the other to null"
            )
        return self


class FiltersSection(Section):
    """Document filters, applied in this order; each counts what it drops, per source."""

    length: LengthFilter = LengthFilter()
    language: LanguageFilter = LanguageFilter()
    gopher_quality: GopherQualityFilter = GopherQualityFilter()
    repetition: RepetitionFilter = RepetitionFilter()
    quality: QualityFilter = QualityFilter()


class PiiSection(Section):
    """PII replacement (`data_pipeline/pii.py`), applied to every document after cleaning and
    before the filters, so that the filters, dedup, decontamination and the shards all see the
    text that is trained on. Each kind is counted per source."""

    enabled: bool = False
    email: bool = True
    """Replace e-mail addresses (datatrove's pattern)."""
    ip: bool = True
    """Replace IPv4 addresses (four dotted numbers 0-255) and IPv6 addresses (hex groups with
    colons, at least three groups or `::`)."""
    phone: bool = True
    """Replace phone numbers written with a `+` country code (`+44 20 7946 0958`) or North
    American numbers with separators (`(555) 123-4567`, `555-123-4567`, `1-800-555-0199`);
    other national formats look too much like other numbers to be told apart."""
    public_ips_only: bool = True
    """Replace only public IP addresses, as datatrove does: private (192.168.x.x, 10.x.x.x),
    loopback, link-local, documentation and other reserved addresses name no one and are
    kept."""
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP>"
    phone_placeholder: str = "<PHONE>"


class UrlFilterSection(Section):
    """Domain block and allow lists (`data_pipeline/urls.py`) for the sources that set
    `url_field`. A list file holds one domain a line (`#` starts a comment); a domain matches
    itself and its subdomains."""

    block_lists: list[InputPath] = []
    """Documents whose URL's domain is on one of these lists are dropped (counted under the
    first list, in order, that holds it)."""
    allow_lists: list[InputPath] = []
    """When given, documents whose domain is on none of these lists are dropped (a block list
    wins over an allow list)."""
    missing_url: Literal["drop", "keep"] = "drop"
    """A record of a url_field source without a URL (no field, null or empty): dropped (the
    lists cannot vouch for it) or kept; counted either way."""


class DataSource(Section):
    """One corpus of the mixture."""

    name: str
    """Short name used in the manifest, the report and shard paths (letters, digits, _ . -)."""
    paths: list[InputGlob] = Field(min_length=1)
    """Files, directories or globs: .jsonl/.json (also .gz/.zst), .parquet, plain text, or
    directories saved with datasets' save_to_disk."""
    weight: float = 1.0
    """Share of the training tokens drawn from this source (normalised over all sources)."""
    text_field: str = "text"
    """Field holding the text in jsonl, parquet and datasets records."""
    text_mode: Literal["file", "line", "paragraph"] = "file"
    """Plain-text files: one document per file, per line, or per blank-line-separated
    paragraph."""
    split: str = "train"
    """Split to read from a datasets DatasetDict directory."""
    on_error: OnError = "raise"
    """A broken JSON line or a record without the text field: stop with an error naming file
    and line, or skip it and count it in the manifest."""
    encoding_errors: Literal["strict", "replace"] = "strict"
    """Bytes that are not UTF-8: an error, or replaced with U+FFFD."""
    max_epochs: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Most passes over this source that target_tokens may need; default: data.max_epochs."""
    url_field: str | None = None
    """Field of jsonl, parquet and datasets records holding the document's URL; with it,
    data.url_filter applies to this source."""
    clean: CleanSection | None = None
    """Overrides of data.clean for this source (only the keys given)."""
    pii: PiiSection | None = None
    """Overrides of data.pii for this source (only the keys given)."""
    filters: FiltersSection | None = None
    """Overrides of data.filters for this source (only the keys given), e.g.
    `{gopher_quality: {enabled: false}}` for code."""

    @field_serializer("clean", "pii", "filters")
    def _only_overrides(self, value: Section | None) -> dict | None:
        # shown and saved as written: the keys not given come from the section-wide settings
        return None if value is None else value.model_dump(mode="json", exclude_unset=True)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"source name {value!r} must start with a letter or digit and hold only letters, "
                "digits, _ . - (it names files)"
            )
        return value

    @field_validator("weight")
    @classmethod
    def _positive_weight(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(
                f"weight must be positive, got {value}; remove the source to leave it out"
            )
        return value


class ExactDedupSection(Section):
    enabled: bool = True
    """Drop documents whose normalised text (lowercased, whitespace collapsed) was seen before;
    the copy in the source listed first (then the earliest file and line) is kept."""


class NearDedupSection(Section):
    """MinHash LSH over word n-grams (FineWeb's defaults), then union-find over the pairs."""

    enabled: bool = True
    ngram: int = Field(default=5, ge=1)
    """Words per shingle; documents shorter than this are one shingle."""
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1)
    """Signature values per band: bands x rows MinHash permutations in all (14 x 8 = 112).
    Pairs of Jaccard similarity s become candidates with probability 1 - (1 - s^rows)^bands."""
    threshold: float | None = Field(default=0.7, ge=0, le=1)
    """A candidate pair is a duplicate only when the share of equal signature values (the
    MinHash estimate of their Jaccard similarity) is at least this; null accepts every
    candidate, as FineWeb does."""
    seed: int = 1
    """Seed of the hash permutations (fixed, so that builds with different recipe seeds
    dedup alike)."""


class DedupSection(Section):
    exact: ExactDedupSection = ExactDedupSection()
    near: NearDedupSection = NearDedupSection()


class DecontaminationSection(Section):
    """Drop training documents that share a word n-gram with an evaluation set."""

    eval_files: list[InputGlob] = []
    """Evaluation files (jsonl, parquet, text, datasets directories) whose text must not be
    trained on."""
    tasks: list[str] = []
    """lm-evaluation-harness task (or group) names whose documents must not be trained on:
    each document's prompt (doc_to_text), answer (doc_to_target) and choices are its text.
    The task's dataset must be loadable offline (in the Hugging Face cache, or local files).
    Needs lm-eval (`pip install lm-eval`)."""
    include_path: InputPath | None = None
    """A directory of lm-eval task yaml files (custom tasks); names found there are loaded
    without indexing lm-eval's own tasks."""
    fields: list[str] | None = None
    """Record fields that hold eval text; null: every string in the record (chat `role`
    values excepted)."""
    ngram: int = Field(default=13, ge=1)
    """Words per n-gram (GPT-3 used 13)."""
    min_words: int = Field(default=8, ge=1)
    """An eval item shorter than `ngram` words but at least this long is matched as a whole;
    shorter items are not matched (they would match common phrases)."""


class ClassifierSection(Section):
    """Training data of the quality classifier (`llmtrain data train-classifier RECIPE`),
    written to data.filters.quality.model. Settings of fastText's supervised training."""

    # resolved against the recipe but not checked when `llmtrain data` starts: only
    # train-classifier reads them
    positive: list[OutputPath] = Field(min_length=1)
    """Files, directories or globs of documents to keep (jsonl, parquet, text, datasets
    directories)."""
    negative: list[OutputPath] = Field(min_length=1)
    """Files, directories or globs of documents to drop."""
    text_field: str = "text"
    """Field holding the text in jsonl, parquet and datasets records."""
    max_documents: int | None = Field(default=None, ge=1)
    """Most documents read from each class (the first ones); null: all."""
    holdout_fraction: float = Field(default=0.1, gt=0, lt=1)
    """Share of each class held out (chosen from the recipe seed) to measure the classifier."""
    dim: int = Field(default=64, ge=1)
    """Width of the word and n-gram vectors."""
    word_ngrams: int = Field(default=2, ge=1)
    """Longest word n-gram used as a feature (DCLM: bigrams)."""
    epoch: int = Field(default=5, ge=1)
    """Passes over the training documents; small sets (hundreds of documents) need ~25."""
    lr: float = Field(default=0.1, gt=0)
    """Learning rate; small sets need ~0.5."""
    min_count: int = Field(default=1, ge=1)
    """Words seen fewer times are left out."""
    bucket: int = Field(default=200_000, ge=1)
    """Hash buckets of the word n-grams: the model file is about (words + bucket) x dim x 4
    bytes."""


class ValidationSection(Section):
    """The validation split: whole documents held out of training, per source."""

    fraction: float = Field(default=0.01, ge=0, lt=1)
    """Share of each source's documents (chosen from the seed); 0: no validation split."""
    min_documents: int = Field(default=1, ge=0)
    """With a fraction above 0, at least this many per source (never all of them)."""


class RaySection(Section):
    """Where the Ray executor runs (`data.executor: ray`; needs `pip install llmtrain[ray]`)."""

    address: str | None = None
    """`auto` (the cluster this machine belongs to, e.g. started by `ray start`), HOST:PORT of
    a running cluster's head, or null: start a Ray on this machine for this build only."""
    partitions: int | None = Field(default=None, ge=1)
    """Reducer tasks of the dedup shuffle (each holds 1/partitions of the digests and band
    keys); default: twice the cluster's CPUs, at most 512. Changes memory per task, never the
    output."""
    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of the Ray started for this build (address null); default: data.num_proc or every
    core this process may use."""
    object_store_mb: int | None = Field(default=None, ge=64)
    """Object store of the Ray started for this build (address null); default: Ray's."""
    scan_part_mb: float = Field(default=256.0, gt=0, allow_inf_nan=False)
    """Input files larger than this are scanned in parts of about this size, one task each
    (jsonl and plain text: whole lines, or paragraphs; parquet: whole row groups). Compressed
    files (.gz, .zst), plain-text files read as one document and `datasets` directories are
    one task each. The parts of a file are then copied into one scan output (I/O of about the
    cleaned text): with files that already outnumber the cluster's cores, a value above their
    size skips that copy. Changes the parallelism, never the output."""


class DataSection(Section):
    """`llmtrain data`: read, clean, filter, dedup, decontaminate, mix, tokenize and pack."""

    sources: list[DataSource] = Field(min_length=1)
    tokenizer: InputPath | None = None
    """Tokenizer directory (Hugging Face format); default: where the recipe's tokenizer stage
    writes (<output_dir>/tokenizer)."""
    seq_len: int = Field(default=2048, gt=0)
    """Tokens per training sequence (pretraining reads windows of seq_len + 1); recorded in
    the manifest as pretraining's default."""
    target_tokens: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Tokens pretraining is meant to read; with the weights it gives each source's epochs.
    Default: the build's training tokens."""
    max_epochs: float | None = Field(default=16.0, gt=0, allow_inf_nan=False)
    """Most passes over any one source target_tokens may need (sources can override);
    null: no limit."""
    num_proc: int | None = Field(default=None, ge=1)
    """Worker processes for cleaning, hashing and tokenizing; default: every CPU core this
    process may use (its CPU affinity, e.g. a Slurm allocation)."""
    executor: Literal["local", "ray"] = "local"
    """Where the work runs: `local` (a process pool on this machine) or `ray` (tasks on a Ray
    cluster, see data.ray). Both write the same shards, byte for byte."""
    ray: RaySection = RaySection()
    shard_text_mb: float = Field(default=256.0, gt=0, allow_inf_nan=False)
    """A shard holds the tokens of at most this many MB of (cleaned) text."""
    keep_intermediate: bool = False
    """Keep the cleaned text, hashes and signatures under work/ after the build."""
    clean: CleanSection = CleanSection()
    pii: PiiSection = PiiSection()
    url_filter: UrlFilterSection = UrlFilterSection()
    filters: FiltersSection = FiltersSection()
    dedup: DedupSection = DedupSection()
    decontamination: DecontaminationSection = DecontaminationSection()
    validation: ValidationSection = ValidationSection()
    classifier: ClassifierSection | None = None
    """Training data of the quality classifier (`llmtrain data train-classifier`)."""

    @model_validator(mode="after")
    def _check_sources(self) -> DataSection:
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            if source.name in seen:
                raise ValueError(
                    f"sources[{index}].name {source.name!r} is used twice; give each source "
                    "its own name"
                )
            seen.add(source.name)
            try:  # a source's overrides combined with the section-wide settings
                self.filters_of(source)
            except ValidationError as exc:
                detail = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"sources[{index}].filters: {detail}") from None
        return self

    def max_epochs_of(self, source: DataSource) -> float | None:
        return source.max_epochs if source.max_epochs is not None else self.max_epochs

    def clean_of(self, source: DataSource) -> CleanSection:
        return overlay(self.clean, source.clean)

    def pii_of(self, source: DataSource) -> PiiSection:
        return overlay(self.pii, source.pii)

    def filters_of(self, source: DataSource) -> FiltersSection:
        return overlay(self.filters, source.filters)


def overlay(base: Section, override: Section | None) -> Section:
    """`base` with the keys that were set in `override` replaced (nested sections too)."""
    if override is None:
        return base
    update = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        current = getattr(base, name)
        if isinstance(value, Section) and isinstance(current, Section):
            value = overlay(current, value)
        update[name] = value
    merged = base.model_copy(update=update)
    return type(base).model_validate(merged.model_dump())  # re-run cross-field checks
