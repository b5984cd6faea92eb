import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmtrain.data_pipeline.readers import (
    ReadStats,
    expand_paths,
    iter_records,
    iter_texts,
)
from llmtrain.data_pipeline.stdlib_corpus import iter_documents
from llmtrain.errors import InputDataError

DOCS = ["first document", "zweites Dokument ü", "第三个文件 🙂"]


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_each_format_yields_the_documents(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    records = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        data = jsonl_bytes(records)
        if suffix.endswith(".gz"):
            data = gzip.compress(data)
        elif suffix.endswith(".zst"):
            data = zstandard.ZstdCompressor().compress(data)
        path.write_bytes(data)
    assert list(iter_texts(path)) == DOCS


def test_datasets_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(str(tmp_path / "ds"))
    assert expand_paths([tmp_path / "ds"]) == [tmp_path / "ds"]
    assert list(iter_texts(tmp_path / "ds", text_field="content")) == DOCS


def test_plain_text_modes(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a one\na two\n\n\nb one\n")
    assert list(iter_texts(path)) == ["a one\na two\n\n\nb one\n"]
    assert list(iter_texts(path, text_mode="line")) == ["a one", "a two", "b one"]
    assert list(iter_texts(path, text_mode="paragraph")) == ["a one\na two", "b one"]


def test_broken_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken}\n{"text": "ok too"}\n')
    with pytest.raises(InputDataError, match=rf"{path}:2: invalid JSON .*on_error: skip"):
        list(iter_texts(path))
    stats = ReadStats()
    assert list(iter_texts(path, on_error="skip", stats=stats)) == ["ok", "ok too"]
    assert stats.skipped == 1 and stats.examples[0].startswith(f"{path}:2:")


def test_missing_text_field_names_file_line_and_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "x", "id": 1}\n')
    with pytest.raises(
        InputDataError,
        match=rf"{path}:2: record has no field 'text' \(fields: content, id\); set text_field",
    ):
        list(iter_texts(path))


def test_non_utf8_names_byte_offset_or_replaces(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputDataError, match=rf"{path}:2: not valid UTF-8 at byte offset 30"):
        list(iter_texts(path))
    assert list(iter_texts(path, encoding_errors="replace")) == ["fine", "caf\ufffd"]
    text = tmp_path / "t.txt"
    text.write_bytes(b"abc\xff")
    with pytest.raises(InputDataError, match=r"not valid UTF-8 at byte offset 3"):
        list(iter_texts(text))


def test_damaged_compressed_and_parquet_files_name_the_file(tmp_path):
    gz = tmp_path / "cut.jsonl.gz"
    records = [{"text": f"line {i} of {i * 7919 % 10007}"} for i in range(2000)]
    compressed = gzip.compress(jsonl_bytes(records))
    gz.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputDataError) as error:
        list(iter_texts(gz))
    assert str(error.value).startswith(f"{gz}: cannot read (EOFError: ")
    assert str(error.value).endswith(
        "it looks like a damaged or truncated gzip file: replace it, or leave it out of the paths"
    )
    table = pa.Table.from_pylist([{"text": f"row {i} " * 40} for i in range(3000)])
    pq.write_table(table, tmp_path / "ok.parquet", row_group_size=1000)
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        InputDataError, match=r"cut.parquet: cannot read as parquet \(.*\); replace"
    ):
        list(iter_texts(tmp_path / "cut.parquet"))
    damaged = bytearray(data)
    damaged[len(data) // 3 : len(data) // 3 + 2000] = b"U" * 2000  # inside a later row group
    (tmp_path / "bad.parquet").write_bytes(bytes(damaged))
    with pytest.raises(InputDataError) as error:
        list(iter_texts(tmp_path / "bad.parquet"))
    assert str(error.value).startswith(
        f"{tmp_path / 'bad.parquet'}: cannot read the rows after row "
    )
    assert str(error.value).endswith(
        "the parquet file looks damaged: replace it, or leave it out of the paths"
    )


def test_records_must_be_objects(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(InputDataError, match=r"a.jsonl:1: expected a JSON object, got list"):
        list(iter_records(path))


def test_expand_paths_globs_dirs_and_missing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jsonl", "d/a.jsonl", "d/sub/c.jsonl", "d/.hidden"):
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in expand_paths([tmp_path / "d"])] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert [p.name for p in expand_paths([str(tmp_path / "d" / "**" / "*.jsonl")])] == [
        "a.jsonl",
        "b.jsonl",
        "c.jsonl",
    ]
    with pytest.raises(InputDataError, match=r"sources\[0\].paths: .*\*.parquet matches no file"):
        expand_paths([str(tmp_path / "*.parquet")], key="sources[0].paths")
    with pytest.raises(InputDataError, match="file not found"):
        expand_paths([tmp_path / "none.jsonl"])


def test_stdlib_corpus_is_real_text():
    source = list(iter_documents("source", max_bytes=200_000))
    docs = list(iter_documents("docs", max_bytes=200_000))
    assert len(source) > 3 and any("def " in d for d in source)
    assert len(docs) > 3 and all("def " not in d[:4] for d in docs)


def parts_of(size: int, part: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + part, size)) for lo in range(0, size, part)]


def test_the_parts_of_a_file_read_in_turn_are_the_file(tmp_path):
    """Every byte-range cut (line files) and row-group cut (parquet) gives the file's documents,
    once each, in order; skip reasons keep the file's line numbers."""
    docs = [f"document {i} " + "word " * (i % 17) for i in range(120)]
    lines = tmp_path / "lines.jsonl"
    records = [{"text": d} for d in docs]
    raw = jsonl_bytes(records[:50]) + b"not json\n\n" + jsonl_bytes(records[50:])
    lines.write_bytes(raw)
    paragraphs = tmp_path / "notes.txt"
    paragraphs.write_text(
        "".join(f"{d}\nmore of {i}\n\n" + "\n" * (i % 3) for i, d in enumerate(docs))
    )
    table = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(records), table, row_group_size=7)
    cases = [
        (lines, {"on_error": "skip"}),
        (paragraphs, {"text_mode": "paragraph"}),
        (paragraphs, {"text_mode": "line"}),
        (table, {}),
    ]
    for path, options in cases:
        whole_stats = ReadStats()
        whole = list(iter_texts(path, stats=whole_stats, **options))
        size = path.stat().st_size
        for part_bytes in (13, 97, 1000, size // 2, size):
            stats = ReadStats()
            pieces = [
                text
                for part in parts_of(size, part_bytes)
                for text in iter_texts(path, stats=stats, part=part, **options)
            ]
            assert pieces == whole, (path.name, options, part_bytes)
            assert (stats.records, stats.skipped) == (whole_stats.records, whole_stats.skipped)
        assert len(whole) == (240 if options.get("text_mode") == "line" else 120)
    stats = ReadStats()
    bad = raw.index(b"not json")
    list(iter_texts(lines, on_error="skip", stats=stats, part=(bad - 1, len(raw))))
    assert stats.examples == [f"{lines}:51: invalid JSON (Expecting value at column 1)"]


def test_a_part_of_a_file_read_from_its_start_cannot_be_asked_for(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_bytes([{"text": "x"}])))
    with pytest.raises(ValueError, match="cannot be read in parts"):
        list(iter_texts(path, part=(0, 5)))
