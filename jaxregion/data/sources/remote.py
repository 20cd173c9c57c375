"""Dataset catalogs: TFDS (array_record via tfds.data_source) and Hugging Face datasets."""

from __future__ import annotations

import os
from collections.abc import Iterator

from jaxregion.data.sources.base import (
    _as_text,
    _Base,
    _chain,
    _datasets,
    _field_of,
    _missing_field,
)
from jaxregion.errors import UserError
from jaxregion.io.hub import go_offline_if_unreachable


class TfdsSource(_Base):
    """A TFDS dataset prepared as array_record, read by index ranges (no TensorFlow)."""

    def __init__(
        self,
        dataset: str,
        split: str,
        field: str = "text",
        data_dir: str | None = None,
        batch: int = 256,
    ):
        self.dataset, self.split, self.field, self.batch = dataset, split, field, batch
        self.data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None

    @property
    def name(self) -> str:
        return f"tfds:{self.dataset}:{self.split}:{self.field}"

    def _how_to_prepare(self) -> str:
        d = self.data_dir or "~/tensorflow_datasets"
        base = self.dataset.split("/")[0]
        return (
            f"prepare it with `tfds build {base} --data_dir {d} --file_format "
            f"array_record` (or builder.download_and_prepare(file_format='array_record')), "
            "then pass data_dir= or set TFDS_DATA_DIR"
        )

    def _open(self):
        import tensorflow_datasets as tfds  # deferred: ~0.7 s to import, tfds: sources only

        try:
            return tfds.data_source(
                self.dataset, split=self.split, data_dir=self.data_dir, download=False
            )
        except Exception as e:  # tfds raises many types; all mean "not usable as given"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "split" in first.lower():
                raise UserError(f"{self.name}: {first}") from None
            raise UserError(
                f"{self.name}: dataset not prepared or not found in "
                f"{self.data_dir or 'the default TFDS data_dir'} ({first[:200]}); "
                f"{self._how_to_prepare()}"
            ) from None

    def _iter(self) -> Iterator[str]:
        ds = self._open()
        n = len(ds)
        for start in range(0, n, self.batch):
            idx = list(range(start, min(n, start + self.batch)))
            records = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[i] for i in idx]
            for i, rec in zip(idx, records):
                where = f" in record {i}"
                text = _as_text(
                    self.name, self.field, _field_of(self.name, rec, self.field, where), where
                )
                if text and text.strip():
                    yield text


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f))
        for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


class HfDiskSource(_Base):
    """A directory written by ``Dataset.save_to_disk`` (memory-mapped Arrow, read in batches)."""

    def __init__(self, path: str, split: str | None = None, field: str = "text"):
        self.path, self.split, self.field = path, split, field

    @property
    def name(self) -> str:
        return f"hf:{self.path}" + (f":{self.split}" if self.split else "")

    def _iter(self) -> Iterator[str]:
        datasets = _datasets(self.name)
        if not _is_saved_dataset(self.path):
            raise UserError(
                f"{self.path}: not a saved HF dataset (no dataset_info.json, "
                "state.json or dataset_dict.json); save it with "
                "Dataset.save_to_disk"
            )
        try:
            ds = datasets.load_from_disk(self.path)
        except Exception as e:
            raise UserError(f"{self.path}: cannot load the saved dataset ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            split = self.split or ("train" if "train" in ds else None)
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            if split not in ds:
                raise UserError(
                    f"{self.path}: split {split!r} not found; available splits: "
                    f"{', '.join(ds)}; pass hf:{self.path}:SPLIT"
                )
            ds = ds[split]
        if self.field not in ds.column_names:
            raise _missing_field(self.path, self.field, ds.column_names)
        for batch in ds.select_columns([self.field]).iter(batch_size=1000):
            for value in batch[self.field]:
                text = _as_text(self.path, self.field, value)
                if text and text.strip():
                    yield text


class HfHubSource(_Base):
    """A Hugging Face hub dataset, streamed row by row."""

    def __init__(self, dataset: str, config: str | None, split: str, field: str = "text"):
        self.dataset, self.config, self.split, self.field = dataset, config, split, field

    @property
    def name(self) -> str:
        cfg = f":{self.config}" if self.config else ""
        return f"hf:{self.dataset}{cfg}:{self.split}:{self.field}"

    def _iter(self) -> Iterator[str]:
        datasets = _datasets(self.name)
        offline = go_offline_if_unreachable()
        try:
            ds = datasets.load_dataset(self.dataset, self.config, split=self.split, streaming=True)
            rows = iter(ds)
            first = next(rows, None)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = (
                " (the hub is unreachable, so only the local HF cache was tried)" if offline else ""
            )
            raise UserError(
                f"{self.name}: cannot open the dataset{where} ({msg[:300]}); check "
                "the name, config and split, and that the hub (or HF cache) is "
                "reachable"
            ) from None
        if first is None:
            return
        for i, row in enumerate(_chain(first, rows)):
            where = f" in row {i}"
            text = _as_text(
                self.name, self.field, _field_of(self.name, row, self.field, where), where
            )
            if text and text.strip():
                yield text
