"""``llmclf predict``: label the rows of a table with a finished run, at any size.

The input is read in chunks of ``chunk_rows`` and the output written as it goes into a
file beside the target, renamed into place at the end: memory holds one chunk whatever
the number of rows, and a crash leaves no half-written output. Launched as several
processes (``torchrun`` / ``accelerate launch``, e.g. one per GPU), the processes take
turns at the chunks and the main one merges their parts into the one output, in order.
On a Ray cluster, ``predict_ray`` runs the same labelling through Ray Data.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import shutil
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from llmclf.config import (
    NON_NEGATIVE,
    POSITIVE,
    REQUIRED,
    DataConfig,
    Options,
    PredictLoadOptions,
    option,
    same_as,
)
from llmclf.data import READERS, TableWriter, iter_table, read_texts, table_rows
from llmclf.distributed import barrier, init_process_group, is_main_process, rank, world_size
from llmclf.errors import LlmclfError
from llmclf.methods.base import ClassifierBase
from llmclf.run_folder import RunFolder, atomic_path
from llmclf.runs.evaluate import data_config_for, load_classifier, prediction_frame

log = logging.getLogger("llmclf")

TABLE_SUFFIXES = (".csv", ".jsonl", ".tsv", ".parquet")
CHUNK_ROWS = 4096  # rows read, predicted and written at a time


@dataclasses.dataclass
class PredictOptions(Options):
    """llmclf predict: label the texts of a file (or, with --ray, of many files)."""

    run: str = option(REQUIRED, "a run folder written by `llmclf train`")
    input: str = option(
        REQUIRED, "CSV / TSV / JSONL / Parquet file of texts (with --ray: a glob or a folder)"
    )
    output: str = option(
        REQUIRED, "where to write: .csv, .jsonl, .tsv or .parquet (with --ray: a new folder)"
    )
    text_column: list[str] | None = same_as(
        DataConfig,
        "text_column",
        default=None,
        help="column(s) holding the text (default: the run's)",
    )
    empty_text: str = same_as(DataConfig, "empty_text")
    chunk_rows: int = option(
        CHUNK_ROWS,
        "rows read, labelled and written at a time: memory holds one chunk, whatever the "
        "size of the input",
        bound=POSITIVE,
    )
    ray: bool = option(
        False,
        "label the files --input names (a glob such as 'shards/*.parquet', or a folder) on a "
        "Ray cluster and write Parquet files into the folder --output, each row with its "
        "row_id (pip install 'llmclf[ray]')",
    )
    ray_address: str | None = option(
        None,
        "with --ray: an existing cluster: auto on one of its nodes, or ray://head:10001 "
        "(default: RAY_ADDRESS, else a local instance)",
    )
    ray_workers: int | None = option(
        None, "with --ray: actors, each holding the classifier once (default 2)", bound=POSITIVE
    )
    ray_cpus_per_worker: float | None = option(
        None, "with --ray: CPUs per actor (default 1)", bound=POSITIVE
    )
    ray_gpus_per_worker: float | None = option(
        None, "with --ray: GPUs per actor (default 0)", bound=NON_NEGATIVE
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ray:
            if Path(self.output).suffix.lower() in TABLE_SUFFIXES:
                raise LlmclfError(
                    f"--output {self.output}: with --ray the output is a folder of Parquet "
                    "parts; give a folder name (e.g. labelled/), or drop --ray to write one file"
                )
            return
        given = [
            f.name
            for f in dataclasses.fields(self)
            if f.name.startswith("ray_") and getattr(self, f.name) is not None
        ]
        if given:
            raise LlmclfError(f"--{given[0].replace('_', '-')} needs --ray")


def predict(options: PredictOptions, load: PredictLoadOptions | None = None, **overrides) -> int:
    """``llmclf predict``: ``predict_file``, or ``predict_ray`` with ``options.ray``.
    ``load`` and ``overrides`` (an instruct run's ``predict_mode``, ...) say how the run
    is loaded. Returns the rows written."""
    load = load or PredictLoadOptions()
    common = dict(
        text_column=options.text_column,
        empty_text=options.empty_text,
        int8=load.int8,
        chunk_rows=options.chunk_rows,
        **load.overrides(),
        **overrides,
    )
    if options.ray:
        cluster = {  # those set; predict_ray's signature holds the defaults
            "workers": options.ray_workers,
            "cpus_per_worker": options.ray_cpus_per_worker,
            "gpus_per_worker": options.ray_gpus_per_worker,
            "address": options.ray_address,
        }
        cluster = {k: v for k, v in cluster.items() if v is not None}
        return predict_ray(options.run, options.input, options.output, **cluster, **common)
    return predict_file(options.run, options.input, options.output, **common)


def check_output_file(output: Path) -> None:
    """Before anything is read: a table name we can write, not a folder, in a folder."""
    if output.suffix.lower() not in TABLE_SUFFIXES:
        raise LlmclfError(f"--output {output.name}: use a .csv, .jsonl, .tsv or .parquet name")
    if output.is_dir():
        raise LlmclfError(f"--output {output} is a folder: give a file name such as labelled.csv")
    blocked = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise LlmclfError(f"--output {output}: {blocked} is a file, not a folder")


def label_rows(
    classifier: ClassifierBase, frame: pd.DataFrame, columns: list[str], where: str
) -> tuple[pd.DataFrame, int]:
    """``frame`` with ``prediction`` and ``proba_<class>`` columns (and the method's extra
    columns, e.g. an instruct run's raw answer), and how many rows had an empty text:
    those get an empty prediction and no probabilities."""
    texts = read_texts(frame, columns, where)
    keep = [i for i, t in enumerate(texts) if t is not None]
    schema = classifier.schema_
    proba = np.full((len(texts), schema.num_classes), np.nan, dtype=np.float32)
    extra: dict[str, list] = {}
    if keep:
        details = classifier.predict_details([texts[i] for i in keep])
        proba[keep], extra = details.proba, details.columns
    decided = schema.decide(np.nan_to_num(proba))
    result = prediction_frame(frame, schema, proba, decided)
    for name, column in extra.items():
        full = [None] * len(texts)
        for row, value in zip(keep, column):
            full[row] = value
        result[name] = full
    if len(keep) < len(texts):
        result.loc[[i for i, t in enumerate(texts) if t is None], "prediction"] = ""
    return result, len(texts) - len(keep)


def count_empty(path: Path, columns: list[str], chunk_rows: int) -> int:
    """Rows of ``path`` whose text is empty (one pass over the text columns only)."""
    only = columns if path.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq") else None
    return sum(
        sum(t is None for t in read_texts(chunk, columns, str(path)))
        for chunk in iter_table(path, chunk_rows, columns=only)
    )


def predict_file(
    run: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    text_column: list[str] | None = None,
    empty_text: str = "drop",
    int8: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    **runtime,
) -> int:
    """Label every row of the table ``input`` with a finished run and write it to
    ``output`` (.csv, .jsonl, .tsv or .parquet) with a ``prediction`` column and one
    ``proba_<class>`` column per class, streaming ``chunk_rows`` rows at a time. Rows
    with an empty text get an empty prediction (``empty_text="error"`` refuses them
    before any model loads). Returns the number of rows written.

    Under ``torchrun`` / ``accelerate launch`` each process labels every N-th chunk
    (on its own GPU when there are GPUs) and the main process writes the one output.

    Example:
        >>> predict_file("runs/bbc", "articles.csv", "labelled.csv")  # doctest: +SKIP
        426
    """
    PredictOptions(  # a Python caller's values are checked as the flags are
        run=str(run), input=str(input), output=str(output), text_column=text_column,
        empty_text=empty_text, chunk_rows=chunk_rows,
    )  # fmt: skip
    input, output = Path(input), Path(output)
    check_output_file(output)
    columns = text_column or data_config_for(run).text_column
    chunks = iter_table(input, chunk_rows)
    first = next(chunks)  # a missing file, a bad format, a missing column: before loading
    read_texts(first.head(1), columns, str(input))
    empty = count_empty(input, columns, chunk_rows) if empty_text == "error" else 0
    if empty:
        raise LlmclfError(f"{input} has {empty} rows with an empty text")
    processes = world_size()
    if processes > 1:
        init_process_group()
        runtime = {**runtime, **_device_of_this_process(runtime)}
    classifier = load_classifier(run, int8=int8, **runtime)
    bar = tqdm(
        total=table_rows(input),
        desc="predict rows",
        unit="row",
        leave=False,
        disable=not classifier.progress or not is_main_process(),
    )
    empties = 0

    def labelled() -> Iterator[pd.DataFrame | None]:
        """This process's chunks labelled; None in place of another process's chunk."""
        nonlocal empties
        for index, chunk in enumerate(chain([first], chunks)):
            if index % processes != rank():
                yield None
                continue
            frame, empty = label_rows(classifier, chunk, columns, str(input))
            empties += empty
            bar.update(len(chunk) * processes)
            yield frame

    try:  # the bar ends before an error is printed, not on the same line
        if processes == 1:
            with TableWriter(output) as writer:
                for frame in labelled():
                    writer.write(frame)
            written = writer.rows
        else:
            written = _merge_parts(labelled(), output)
    finally:
        bar.close()
    if empties:
        log.warning("%d rows have an empty text: their prediction is empty", empties)
    return written


def _device_of_this_process(runtime: dict) -> dict:
    """One GPU per process, unless ``--device`` says otherwise."""
    import torch

    from llmclf.distributed import local_rank

    if runtime.get("device") in (None, "auto") and torch.cuda.is_available():
        return {"device": f"cuda:{local_rank() % torch.cuda.device_count()}"}
    return {}


def _merge_parts(frames: Iterator[pd.DataFrame | None], output: Path) -> int:
    """Several processes: each writes its chunks (``frames``: None for another's) as
    parts in the output's format beside it; after a barrier the main process joins them
    in chunk order into the output (text formats byte for byte, the header once; Parquet
    through one writer) and removes the parts."""
    parts = output.with_name(f".{output.name}.parts")
    if is_main_process():
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
    barrier()
    rows = 0
    for index, frame in enumerate(frames):
        if frame is not None:
            name = parts / f"chunk-{index:09d}{output.suffix}"
            with TableWriter(name, header=index == 0) as writer:
                writer.write(frame)
            rows += writer.rows
    barrier()
    if is_main_process():
        try:
            names = sorted(parts.glob(f"chunk-*{output.suffix}"))
            if output.suffix.lower() == ".parquet":
                with TableWriter(output) as writer:
                    for name in names:
                        writer.write(pd.read_parquet(name))
            else:
                output.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(output) as partial, partial.open("wb") as joined:
                    for name in names:
                        with name.open("rb") as part:
                            shutil.copyfileobj(part, joined)
        finally:
            shutil.rmtree(parts, ignore_errors=True)
    barrier()
    return _all_rows(rows)


def _all_rows(rows: int) -> int:
    """The rows every process wrote, summed."""
    import torch

    nccl = torch.distributed.get_backend() == "nccl"  # its tensors live on the GPU
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else None
    total = torch.tensor([rows], dtype=torch.long, device=device)
    torch.distributed.all_reduce(total)
    return int(total.item())


# ---------------------------------------------------------------------------------------
# Ray Data: the same labelling across a cluster
# ---------------------------------------------------------------------------------------

ID_COLUMN = "row_id"
READ_SUFFIXES = tuple(READERS)


def input_files(pattern: str | Path) -> list[Path]:
    """The files a path or glob pattern names, in sorted order (the order of the ids)."""
    text = str(pattern)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise LlmclfError(f"--input {text} matches no file")
        return files
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in READ_SUFFIXES)
        if not files:
            raise LlmclfError(f"--input {path} holds no CSV, TSV, JSONL or Parquet file")
        return files
    return [path]


def _shard_rows(path: str, columns: list[str], chunk_rows: int) -> tuple[int, int]:
    """Rows and empty texts of one input file (a Ray task: the files are counted in
    parallel, so every row gets its global id before any is labelled)."""
    rows = empty = 0
    only = columns if Path(path).suffix.lower() in (".csv", ".tsv", ".parquet", ".pq") else None
    for chunk in iter_table(path, chunk_rows, columns=only):
        rows += len(chunk)
        empty += sum(t is None for t in read_texts(chunk, columns, path))
    return rows, empty


def read_shards(shard: pd.DataFrame, chunk_rows: int, id_column: str) -> Iterator[pd.DataFrame]:
    """Ray Data: input files (rows of ``path``, ``offset``) -> their rows in chunks, each
    row with its global ``id_column`` (its position across the files, in order)."""
    for path, offset in zip(shard["path"], shard["offset"]):
        start = int(offset)
        for chunk in iter_table(path, chunk_rows):
            if id_column not in chunk.columns:
                chunk.insert(0, id_column, np.arange(start, start + len(chunk)))
            start += len(chunk)
            yield chunk


class LabelRows:
    """Ray Data actor: the run's classifier, loaded once per actor, labels batches of
    rows exactly as ``llmclf predict`` labels a chunk."""

    def __init__(self, run: str, columns: list[str], int8: bool, runtime: dict):
        self.classifier = load_classifier(run, int8=int8, progress=False, **runtime)
        self.columns = columns

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        labelled, _ = label_rows(self.classifier, frame, self.columns, "ray batch")
        return labelled


def predict_ray(
    run: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    text_column: list[str] | None = None,
    empty_text: str = "drop",
    int8: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    **runtime,
) -> int:
    """Label every row of the files ``input`` names (a glob such as ``'shards/*.parquet'``
    or a folder) through Ray Data and write Parquet files into the folder ``output``.

    Each of ``workers`` Ray actors loads the classifier once and labels batches of
    ``chunk_rows`` rows; every row keeps its input columns and gets a ``row_id`` (its
    position across the sorted files, unless the input has that column already), so
    ``sort_values("row_id")`` restores the input order. ``address``: an existing Ray
    cluster (else ``RAY_ADDRESS``, else a local instance). The folder is written beside
    the target and renamed into place when every row is labelled. Returns the rows.

    Example:
        >>> predict_ray("runs/bbc", "shards/*.parquet", "labelled/", workers=8)  # doctest: +SKIP
        50000000
    """
    try:
        import ray
    except ImportError:
        raise LlmclfError("--ray needs Ray Data: pip install 'llmclf[ray]'") from None
    PredictOptions(  # a Python caller's values are checked as the flags are
        run=str(run), input=str(input), output=str(output), text_column=text_column,
        empty_text=empty_text, chunk_rows=chunk_rows, ray=True, ray_address=address,
        ray_workers=workers, ray_cpus_per_worker=cpus_per_worker,
        ray_gpus_per_worker=gpus_per_worker,
    )  # fmt: skip
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise LlmclfError(f"--output {output} exists: give a new folder for the labelled shards")
    files = input_files(input)
    columns = text_column or data_config_for(run).text_column
    for path in files:  # missing files, bad formats, a missing column: before Ray starts
        read_texts(next(iter_table(path, chunk_rows)).head(1), columns, str(path))
    if RunFolder(run).unfinished:
        raise LlmclfError(f"{run} is an unfinished run: continue it with llmclf train ... --resume")

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if started and address is None and workers * cpus_per_worker > cpus:
            raise LlmclfError(
                f"--ray-workers {workers} x --ray-cpus-per-worker {cpus_per_worker:g} asks for "
                f"more than the {cpus:g} CPUs of this machine's Ray instance: ask for fewer"
            )
        count = ray.remote(_shard_rows)
        counted = ray.get([count.remote(str(p), columns, chunk_rows) for p in files])
        rows = [r for r, _ in counted]
        empty = sum(e for _, e in counted)
        if empty and empty_text == "error":
            raise LlmclfError(f"{input} has {empty} rows with an empty text")
        offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).tolist()
        shards = ray.data.from_items(
            [{"path": str(p), "offset": int(o)} for p, o in zip(files, offsets)],
            override_num_blocks=len(files),
        )
        labelled = shards.map_batches(
            read_shards,
            fn_kwargs={"chunk_rows": chunk_rows, "id_column": ID_COLUMN},
            batch_size=1,
            batch_format="pandas",
            # reading takes no CPU of the budget: the classifiers hold every CPU they ask
            # for, and a read waiting for one of those would wait for ever
            num_cpus=0,
        ).map_batches(
            LabelRows,
            fn_constructor_args=(str(run), list(columns), int8, runtime),
            batch_size=chunk_rows,
            batch_format="pandas",
            concurrency=workers,
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as partial:
            labelled.write_parquet(str(partial.resolve()))
    except ray.exceptions.RayError as exc:  # a mistake of ours, raised inside a worker
        cause = _llmclf_cause(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        if started:
            ray.shutdown()
    if empty:
        log.warning("%d rows have an empty text: their prediction is empty", empty)
    return int(sum(rows))


def _llmclf_cause(exc: BaseException) -> LlmclfError | None:
    """The LlmclfError a Ray worker raised, unwrapped from Ray's exceptions."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, LlmclfError):
            return LlmclfError(str(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None
