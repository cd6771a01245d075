"""What the commands do with run folders, one module per command:

    train.py      train_run, zero_shot_run         llmclf train, llmclf evaluate --zero-shot
    evaluate.py   load_classifier, evaluate_run     llmclf evaluate
    predict.py    predict_file, predict_ray         llmclf predict (streamed; several
                                                    processes; --ray)
    suggest.py    suggest_texts                     llmclf suggest (active learning)
    calibrate.py  calibrate_run                     llmclf calibrate
    compare.py    compare_runs                      llmclf compare
    grid.py       run_grid                          llmclf experiment
    distill.py    distill_run                       llmclf distill
    export.py     export_run (its exporters)        llmclf export

The file names and their reading and writing belong to ``llmclf.run_folder``.
"""

from llmclf.methods.registry import method_classes
from llmclf.runs.calibrate import calibrate_run
from llmclf.runs.compare import compare_runs
from llmclf.runs.distill import distill_run
from llmclf.runs.evaluate import evaluate_examples, evaluate_run, load_classifier
from llmclf.runs.export import export_onnx, export_run
from llmclf.runs.grid import run_grid
from llmclf.runs.predict import predict_file
from llmclf.runs.suggest import suggest_texts
from llmclf.runs.train import train_run
from llmclf.runs.zero_shot import zero_shot_run

__all__ = [
    "calibrate_run",
    "compare_runs",
    "distill_run",
    "evaluate_examples",
    "evaluate_run",
    "export_onnx",
    "export_run",
    "load_classifier",
    "method_classes",
    "predict_file",
    "run_grid",
    "suggest_texts",
    "train_run",
    "zero_shot_run",
]
