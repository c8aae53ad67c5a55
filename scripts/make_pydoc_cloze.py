"""Write harness/lmeval_tasks/data/harness_pydoc_cloze.jsonl: a 4-way cloze task cut from the held-out
(validation) split of the pydoc corpus, so the quality workload's models never trained on it.

Each item is up to 96 bytes of context that end just before a word of 4+ letters, that word, and three
distractors of the same length drawn from the words of the training split (so length alone gives
nothing away); the answer position is drawn at random. Deterministic (seed 0), offline. The text is
CPython's pydoc topic help (PSF licence); run under the Python whose text you want (3.11.7 shipped).

    python scripts/make_pydoc_cloze.py [N]
"""
from __future__ import annotations

import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

from harness.corpus import load_corpus

OUT = Path(__file__).resolve().parent.parent / "harness" / "lmeval_tasks" / "data" / "harness_pydoc_cloze.jsonl"
CONTEXT = 96


def main(n: int = 1000) -> None:
    corpus = load_corpus("pydoc")
    train = bytes(corpus.train.tolist()).decode("utf-8", errors="ignore")
    val = bytes(corpus.val.tolist()).decode("utf-8", errors="ignore")
    by_length: dict[int, list[str]] = defaultdict(list)
    for word in sorted(set(re.findall(r"\b[a-z]{4,12}\b", train))):
        by_length[len(word)].append(word)
    rng = random.Random(0)
    candidates = [m for m in re.finditer(r"(?<=[a-z,;:] )([a-z]{4,12})\b", val) if m.start() >= CONTEXT]
    rng.shuffle(candidates)
    items = []
    for match in candidates:
        word = match.group(1)
        context = val[match.start() - CONTEXT: match.start()].rstrip(" ")
        if "\n\n" in context:
            context = context.rsplit("\n\n", 1)[1]
        context = context.lstrip()
        pool = [w for w in by_length[len(word)] if w != word]
        if len(context) < 40 or len(pool) < 3:
            continue
        choices = rng.sample(pool, 3)
        label = rng.randrange(4)
        choices.insert(label, word)
        items.append({"context": context, "choices": choices, "label": label})
        if len(items) == n:
            break
    items.sort(key=lambda item: item["context"])
    OUT.write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"{OUT}: {len(items)} items from {corpus.label}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
