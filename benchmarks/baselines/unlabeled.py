"""Write the bbc-news training articles that the 400-example teacher never saw, without
their labels, as the distillation's unlabelled transfer set.

Usage: python benchmarks/baselines/unlabeled.py OUT.jsonl
"""

import sys

import pandas as pd

from llmclf.config import DataConfig
from llmclf.data import examples_by_split, sample

config = DataConfig(data="bbc-news", train_limit=400)
splits, _ = examples_by_split(config)
train = splits["train"]
seen = set(sample(train, config.train_limit, config.split_seed, multi_label=False).texts)
rest = [t for t in train.texts if t not in seen]
pd.DataFrame({"text": rest}).to_json(sys.argv[1], orient="records", lines=True, force_ascii=False)
print(f"wrote {len(rest)} unlabelled texts to {sys.argv[1]}")
