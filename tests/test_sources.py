"""Sources: every format yields the same documents (and windows) as plain text, streamed."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxregion.data import synthetic as S
from jaxregion.data.sources import Source, open_source, parse_lang_spec, sources_from_dir
from jaxregion.errors import UserError

DOCS = list(S.generate("grk", 120, 0)) + ["ünïcode — ok", "tail"]


def _windows(source: Source, tokenizer, seq_len: int = 64) -> np.ndarray:
    from jaxregion.data.packing import pack_windows

    return np.stack(list(pack_windows(source.documents(), tokenizer, seq_len)))


@pytest.fixture(scope="module")
def txt(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("txt") / "grk.txt"
    p.write_text("".join(d + "\n" for d in DOCS), encoding="utf-8")
    return str(p)


def _zst(path: str, data: bytes) -> None:
    import zstandard

    with open(path, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
        w.write(data)


def test_text_plain_gzip_zstd_and_blank_separated(tmp_path, txt):
    data = open(txt, "rb").read()
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(data))
    _zst(str(tmp_path / "a.txt.zst"), data)
    (tmp_path / "crlf.txt").write_bytes(b"\r\n\r\n".join(d.encode() for d in DOCS))
    for spec in (
        txt,
        str(tmp_path / "a.txt.gz"),
        str(tmp_path / "a.txt.zst"),
        str(tmp_path / "crlf.txt"),
        "file:" + txt,
    ):
        src = open_source(spec)
        assert isinstance(src, Source)
        assert list(src.documents()) == DOCS, spec
    (tmp_path / "p.txt").write_text("a\nb\n\n\nc\n\n d \n", encoding="utf-8")
    p = str(tmp_path / "p.txt")
    assert list(open_source(p).documents()) == ["a", "b", "c", " d "]
    assert list(open_source(p, doc_sep="blank").documents()) == ["a\nb", "c", " d "]
    assert list(open_source(p + "?doc_sep=blank").documents()) == ["a\nb", "c", " d "]
    with pytest.raises(UserError, match="doc_sep='para'"):
        open_source(p, doc_sep="para")


def test_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = "".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(DOCS))
    (tmp_path / "a.jsonl").write_text(rows, encoding="utf-8")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    for spec in ("a.jsonl", "a.jsonl.gz"):
        path = str(tmp_path / spec)
        assert list(open_source(path, field="body").documents()) == DOCS
        assert list(open_source(path + "?field=body").documents()) == DOCS
    pq.write_table(
        pa.table({"id": list(range(len(DOCS))), "body": DOCS}),
        tmp_path / "a.parquet",
        row_group_size=16,
    )
    assert list(open_source(str(tmp_path / "a.parquet"), field="body").documents()) == DOCS

    with pytest.raises(UserError, match=r"a\.jsonl.*'text' not found.*line 1.*id, body"):
        list(open_source(str(tmp_path / "a.jsonl")).documents())
    with pytest.raises(UserError, match=r"a\.parquet.*'txt' not found.*id, body"):
        list(open_source(str(tmp_path / "a.parquet?field=txt")).documents())
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: expected a JSON object"):
        list(open_source(str(tmp_path / "bad.jsonl")).documents())


def test_bad_inputs_name_the_culprit(tmp_path, txt):
    data = open(txt, "rb").read() * 20
    gz = gzip.compress(data)
    (tmp_path / "cut.txt.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(UserError, match=r"cut\.txt\.gz: truncated or corrupt gzip stream"):
        list(open_source(str(tmp_path / "cut.txt.gz")).documents())
    _zst(str(tmp_path / "full.zst"), data)
    z = (tmp_path / "full.zst").read_bytes()
    (tmp_path / "cut.txt.zst").write_bytes(z[:-7])
    with pytest.raises(UserError, match=r"cut\.txt\.zst: truncated or corrupt zstd stream"):
        list(open_source(str(tmp_path / "cut.txt.zst")).documents())
    (tmp_path / "junk.txt.zst").write_bytes(b"not zstd at all" * 10)
    with pytest.raises(UserError, match=r"junk\.txt\.zst: .*zstd"):
        list(open_source(str(tmp_path / "junk.txt.zst")).documents())
    with pytest.raises(UserError, match=r"unknown source scheme 'foo'.*tfds:.*hf:.*synthetic:"):
        open_source("foo:bar")
    with pytest.raises(UserError, match=r"C:\\nope\.txt: no such file"):
        list(open_source("C:\\nope.txt").documents())
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.txt: no documents"):
        list(open_source(str(tmp_path / "empty.txt")).documents())
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt: not valid UTF-8 near byte 6"):
        list(open_source(str(tmp_path / "latin1.txt")).documents())
    with pytest.raises(UserError, match=r"synthetic:xx.*lat"):
        open_source("synthetic:xx")
    with pytest.raises(UserError, match="bad option 'colour=red'"):
        open_source(txt + "?colour=red")
    with pytest.raises(UserError, match="expected LANG=SOURCE"):
        parse_lang_spec("grk.txt")
    assert parse_lang_spec(" ar = tfds:wiki40b/ar:test:text") == ("ar", "tfds:wiki40b/ar:test:text")


def test_synthetic_scheme():
    src = open_source("synthetic:hng:7:3")
    assert src.name == "synthetic:hng:7:3"
    assert list(src.documents()) == list(S.generate("hng", 7, 3))
    assert len(list(open_source("synthetic:lat").documents())) == 10000


def test_sources_from_dir_prefers_split_files(tmp_path):
    (tmp_path / "ar.train.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "ar.test.txt").write_text("b\n", encoding="utf-8")
    (tmp_path / "de.txt").write_text("c\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    train, test = sources_from_dir(str(tmp_path)), sources_from_dir(str(tmp_path), "test")
    assert {k: list(v.documents()) for k, v in train.items()} == {"ar": ["a"], "de": ["c"]}
    assert {k: list(v.documents()) for k, v in test.items()} == {"ar": ["b"], "de": ["c"]}
    assert set(sources_from_dir(str(tmp_path), "dev")) == {"de"}  # never ar's other splits
    with pytest.raises(UserError, match=r"nope: no such directory"):
        sources_from_dir(str(tmp_path / "nope"))
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no LANG\.train\.txt or LANG\.txt"):
        sources_from_dir(str(empty))


def test_hf_save_to_disk_matches_text(tmp_path, txt, tokenizer):
    import datasets

    ds = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "text": DOCS})
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(
        str(tmp_path / "dd")
    )
    ref = _windows(open_source(txt), tokenizer)
    for spec in (
        str(tmp_path / "ds"),
        "hf:" + str(tmp_path / "ds"),
        f"hf:{tmp_path / 'dd'}:train:text",
    ):
        src = open_source(spec)
        assert list(src.documents()) == DOCS, spec
        np.testing.assert_array_equal(_windows(src, tokenizer), ref)
    assert list(open_source(f"hf:{tmp_path / 'dd'}:test").documents()) == DOCS[:3]
    with pytest.raises(UserError, match=r"split 'dev' not found.*train, test"):
        list(open_source(f"hf:{tmp_path / 'dd'}:dev").documents())
    with pytest.raises(UserError, match=r"'body' not found.*id, text"):
        list(open_source(f"hf:{tmp_path / 'ds'}::body").documents())


def test_hf_streaming_load_dataset_reads_rows(tmp_path, txt, tokenizer):
    """The hub path goes through load_dataset(streaming=True); a local data dir exercises it."""
    from jaxregion.data.sources import HfHubSource

    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)), "utf-8"
    )
    src = HfHubSource(str(tmp_path), None, "train", "text")
    assert list(src.documents()) == DOCS
    np.testing.assert_array_equal(_windows(src, tokenizer), _windows(open_source(txt), tokenizer))
    with pytest.raises(UserError, match=r"field 'body' not found in row 0.*text"):
        list(HfHubSource(str(tmp_path), None, "train", "body").documents())


def test_hf_hub_spec_parsing():
    from jaxregion.data.sources import HfHubSource

    a = open_source("hf:wikimedia/wikipedia:20231101.ar:train:text")
    b = open_source("hf:org/data:train:body")
    c = open_source("hf:org/data:cfg:test")
    assert isinstance(a, HfHubSource) and (a.dataset, a.config, a.split, a.field) == (
        "wikimedia/wikipedia",
        "20231101.ar",
        "train",
        "text",
    )
    assert (b.config, b.split, b.field) == (None, "train", "body")
    assert (c.config, c.split, c.field) == ("cfg", "test", "text")


# ------------------------------------------------------------------------------------ TFDS ---


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    class JaxregionTinyCorpus(tfds.core.GeneratorBasedBuilder):
        """Two configs of plain text, in generation order (no shuffling)."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="grk"), tfds.core.BuilderConfig(name="cyr")]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text(), "n": tfds.features.Scalar(np.int32)}
                ),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            docs = DOCS if self.builder_config.name == "grk" else list(S.generate("cyr", 30))
            for i, doc in enumerate(docs):
                yield i, {"text": doc, "n": i}

    d = str(tmp_path_factory.mktemp("tfds"))
    for cfg in ("grk", "cyr"):
        builder = JaxregionTinyCorpus(config=cfg, data_dir=d, file_format="array_record")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    return d


def test_tfds_matches_text(tfds_dir, txt, tokenizer, monkeypatch):
    src = open_source("tfds:jaxregion_tiny_corpus/grk:train:text", data_dir=tfds_dir)
    assert list(src.documents()) == DOCS
    np.testing.assert_array_equal(_windows(src, tokenizer), _windows(open_source(txt), tokenizer))
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    assert list(open_source("tfds:jaxregion_tiny_corpus/cyr:train").documents()) == list(
        S.generate("cyr", 30)
    )
    assert list(open_source("tfds:jaxregion_tiny_corpus/cyr:train[:5]").documents()) == list(
        S.generate("cyr", 5)
    )


def test_tfds_errors(tfds_dir, tmp_path):
    with pytest.raises(UserError, match=r"field 'body' not found in record 0.*text"):
        list(
            open_source("tfds:jaxregion_tiny_corpus/grk:train:body", data_dir=tfds_dir).documents()
        )
    with pytest.raises(UserError, match=r"'n' in record 0 holds int"):
        list(open_source("tfds:jaxregion_tiny_corpus/grk:train:n", data_dir=tfds_dir).documents())
    for name in ("jaxregion_tiny_corpus/grk", "wiki40b/ar", "no_such_dataset"):
        with pytest.raises(
            UserError,
            match=rf"tfds:{name}:test.*not prepared.*tfds build "
            rf"{name.split('/')[0]} --data_dir {tmp_path} "
            "--file_format array_record",
        ):
            list(open_source(f"tfds:{name}:test?data_dir={tmp_path}").documents())
    with pytest.raises(UserError, match=r"expected tfds:NAME"):
        open_source("tfds:wiki40b")


# ------------------------------------------------------------------------------- streaming ---

_MEASURE = textwrap.dedent("""
    import sys, time, json
    from jaxregion.data.sources import open_source
    from jaxregion.data.packing import pack_windows
    from jaxregion.data.tokenizer import load_tokenizer

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    tok = load_tokenizer(sys.argv[2])
    list(pack_windows(["warm up"] * 2000, tok, 8))
    base = hwm()
    t0 = time.perf_counter()
    n = sum(1 for _ in pack_windows(open_source(sys.argv[1]).documents(), tok, 512, 100))
    print(json.dumps({"n": n, "s": time.perf_counter() - t0, "growth": hwm() - base}))
""")


@pytest.mark.slow
def test_first_windows_of_a_big_file_stream(tmp_path, tokenizer_dir):
    """50 MB of text: the first 100 windows come and peak memory barely moves (their speed
    target, < 5 s, is in scripts/bench_targets.py)."""
    block = "".join(d + "\n" for lang in ("lat", "cjk") for d in S.generate(lang, 3000, 1))
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < 50_000_000:
            f.write(block)
    assert os.path.getsize(path) >= 50_000_000
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), tokenizer_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 100
    assert r["growth"] < 30_000_000, r  # a whole-file read would add >= 50 MB
