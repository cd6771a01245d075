"""Time a student run on the bbc-news test split with PyTorch and with ONNX Runtime, side by
side in one process (same batch size, one warm-up batch each); append to RUN/onnx_speed.json.

Usage: python benchmarks/baselines/onnx_speed.py RUN   (after llmclf export RUN)
"""

import json
import sys
import time
from pathlib import Path

from llmclf.methods.onnx import OnnxClassifier
from llmclf.runs.evaluate import data_config_for, evaluation_split, load_classifier

run = Path(sys.argv[1])
torch_clf = load_classifier(run, progress=False)
onnx_clf = OnnxClassifier(run / "onnx", batch_size=torch_clf.config_.train.eval_batch_size)
test = evaluation_split(data_config_for(run), "test", multi_label=False)
result = {"run": str(run), "n": len(test)}
for name, clf in (("pytorch", torch_clf), ("onnxruntime", onnx_clf)):
    clf.predict_proba(test.texts[:16])
    start = time.perf_counter()
    predicted = clf.predict(test.texts)
    seconds = time.perf_counter() - start
    result[f"{name}_examples_per_s"] = round(len(test) / seconds, 2)
    result[f"{name}_accuracy"] = sum(p == t for p, t in zip(predicted, test.labels)) / len(test)
result["onnx_speedup"] = round(
    result["onnxruntime_examples_per_s"] / result["pytorch_examples_per_s"], 2
)
(run / "onnx_speed.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result))
