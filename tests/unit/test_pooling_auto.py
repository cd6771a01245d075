"""--pooling auto: last or mean, chosen on the validation split; the choice follows the
figures, the run trains, saves and loads with the chosen pooling, metrics.json keeps the
figures, and a run without validation texts is refused in one line."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from llmclf import HeadClassifier, LlmclfError
from llmclf.cli import main
from llmclf.methods.pooling_auto import PoolingChoice
from tests.conftest import make_texts, make_tiny_llama

FAST = dict(
    epochs=1,
    batch_size=8,
    max_length=24,
    learning_rate=5e-3,
    head_learning_rate=1e-2,
    eval_batch_size=16,
    device="cpu",
    dtype="float32",
)
# a frozen head needs more passes than LoRA; they cost milliseconds on cached features
FROZEN = dict(FAST, lora="none", epochs=8, head_learning_rate=5e-2)


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCLF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def blind_llama(tmp_path_factory) -> str:
    """The tiny Llama with every attention output zeroed: each position's hidden state is a
    function of its own token alone, so the appended EOS that last pooling reads is the
    same vector for every text, while the mean over the text's tokens still tells the
    classes apart. Mean pooling must win on it."""
    from transformers import LlamaForCausalLM

    folder = make_tiny_llama(tmp_path_factory.mktemp("blind-llama"))
    model = LlamaForCausalLM.from_pretrained(folder)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
    model.save_pretrained(folder)
    return str(folder)


class FixedFigures(HeadClassifier):
    """A head classifier whose candidate runs report given validation figures, not
    measured ones: the choice, and the run kept, must follow them."""

    figures: dict[str, float] = {}

    def _fit_pooling(self, *args):
        super()._fit_pooling(*args)
        pooling = self.config_.head.pooling
        self.trained = {**getattr(self, "trained", {}), pooling: self.model_}
        best = self.figures[pooling]
        self.train_result_ = dataclasses.replace(self.train_result_, best_metric=best)


def test_the_choice_follows_the_figures_and_a_tie_goes_to_last():
    assert PoolingChoice.pick({"last": 0.6, "mean": 0.7}, "macro_f1", "", 0.0).chosen == "mean"
    assert PoolingChoice.pick({"last": 0.7, "mean": 0.6}, "macro_f1", "", 0.0).chosen == "last"
    assert PoolingChoice.pick({"last": 0.5, "mean": 0.5}, "macro_f1", "", 0.0).chosen == "last"
    record = PoolingChoice.pick({"last": 0.61234, "mean": 0.7}, "micro_f1", "how", 1.234).record()
    assert record == {
        "chosen": "mean",
        "validation_micro_f1": {"last": 0.6123, "mean": 0.7},
        "how": "how",
        "seconds": 1.23,
    }


def test_mean_wins_where_the_last_token_sees_nothing_and_lora_none_is_exact(blind_llama):
    texts, labels = make_texts(60)
    validation = make_texts(30, seed=9)
    clf = HeadClassifier(blind_llama, progress=False, pooling="auto", **FROZEN)
    clf.fit(texts, labels, eval_set=validation)
    choice = clf.pooling_choice_
    assert choice.chosen == "mean" and clf.config_.head.pooling == "mean"
    assert choice.scores["mean"] > choice.scores["last"] + 0.3
    assert choice.scores["last"] < 0.4  # one vector for every text: a single class predicted
    # --lora none: the probe was the run's own training, so the kept run scores the same
    assert clf.train_result_.best_metric == pytest.approx(choice.scores["mean"])
    assert "exact" in choice.how
    eos = clf.tokenizer_.eos_token_id
    assert all(ids[-1] != eos for ids in clf._encode(texts[:5]))  # mean appends no EOS
    assert clf.get_params()["pooling"] == "auto"  # a clone chooses again


@pytest.mark.parametrize(
    ("figures", "chosen"),
    [({"last": 0.9, "mean": 0.2}, "last"), ({"last": 0.2, "mean": 0.9}, "mean")],
)
def test_the_lora_run_kept_is_the_one_the_figures_chose(tiny_llama, figures, chosen):
    texts, labels = make_texts(24)
    clf = type("Fixed", (FixedFigures,), {"figures": figures})(
        tiny_llama, progress=False, pooling="auto", **FAST
    )
    clf.fit(texts, labels, eval_set=make_texts(12, seed=4))
    assert set(clf.trained) == {"last", "mean"}  # a full LoRA run with each pooling
    assert clf.model_ is clf.trained[chosen]  # last trains first: the kept run is put back
    assert clf.config_.head.pooling == chosen
    assert clf.fit_choices_["pooling_auto"]["validation_macro_f1"] == figures
    assert "full LoRA run" in clf.pooling_choice_.how
    eos = clf.tokenizer_.eos_token_id
    appended = [ids[-1] == eos for ids in clf._encode(texts[:5])]
    assert all(appended) if chosen == "last" else not any(appended)
    assert clf.trainable_params_ > 10 * clf._head().weight.numel()  # LoRA trained, not a head


def test_multi_label_runs_choose_on_micro_f1(blind_llama):
    texts, labels = make_texts(48)
    tags = [[label] if i % 4 else [label, "news"] for i, label in enumerate(labels)]
    val_texts, val_labels = make_texts(24, seed=9)
    val_tags = [[label] if i % 4 else [label, "news"] for i, label in enumerate(val_labels)]
    clf = HeadClassifier(blind_llama, progress=False, pooling="auto", **FROZEN)
    clf.fit(texts, tags, eval_set=(val_texts, val_tags))
    record = clf.fit_choices_["pooling_auto"]
    assert set(record["validation_micro_f1"]) == {"last", "mean"}
    assert record["chosen"] == clf.config_.head.pooling


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto-data")
    frames = []
    for split, n, seed in (("train", 60, 0), ("validation", 30, 9), ("test", 15, 5)):
        texts, labels = make_texts(n, seed=seed)
        frames.append(pd.DataFrame({"text": texts, "label": labels, "split": split}))
    pd.concat(frames).to_csv(folder / "d.csv", index=False)
    return folder


def cli_train(model: str, data, output, *extra: str) -> int:
    options = ["--max-length", "24", "--dtype", "float32"]
    return main(
        ["train", "--model", model, "--data", str(data), *options, "--output", str(output), *extra]
    )


@pytest.mark.parametrize("lora", ["none", "on"])
def test_a_cli_run_records_the_choice_and_loads_with_it(
    blind_llama, tiny_llama, data, tmp_path, capsys, lora
):
    from llmclf.run_folder import TEST_PREDICTIONS
    from llmclf.runs import load_classifier

    run = tmp_path / "run"
    # --lora none on the blind model: mean must win; LoRA: whichever the figures say
    model, epochs = (blind_llama, "8") if lora == "none" else (tiny_llama, "1")
    code = cli_train(
        model, data / "d.csv", run, "--pooling", "auto", "--lora", lora,
        "--epochs", epochs, "--head-learning-rate", "5e-2",
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    record = json.loads((run / "metrics.json").read_text())["pooling_auto"]
    scores, chosen = record["validation_macro_f1"], record["chosen"]
    assert record["seconds"] > 0 and set(scores) == {"last", "mean"}
    assert scores[chosen] == max(scores.values())
    if lora == "none":
        assert chosen == "mean" and scores["mean"] > scores["last"]
    assert f"--pooling auto chose {chosen}: validation macro_f1 last" in err  # the log line
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["head"]["pooling"] == chosen
    clf = load_classifier(run, progress=False, dtype="float32")
    assert clf.config_.head.pooling == chosen
    rows = [json.loads(line) for line in (run / TEST_PREDICTIONS).read_text().splitlines()]
    assert [r["prediction"] for r in rows] == clf.predict([r["text"] for r in rows])
    probe = [r["text"] for r in rows[:4]]
    reloaded = HeadClassifier.load(run, progress=False, dtype="float32")
    np.testing.assert_allclose(reloaded.predict_logits(probe), clf.predict_logits(probe))


def test_auto_without_validation_texts_is_refused_before_any_model_loads(tmp_path):
    """The Python API without eval_set and with --validation-fraction 0 (the CLI always has
    a validation split: it carves one out of train where the data has none)."""
    texts, labels = make_texts(30)
    missing = str(tmp_path / "no-model-here")  # never read: the refusal comes first
    clf = HeadClassifier(missing, pooling="auto", validation_fraction=0.0, progress=False)
    with pytest.raises(LlmclfError, match="--pooling auto .* no validation texts") as error:
        clf.fit(texts, labels)
    assert "\n" not in str(error.value)


def test_what_an_auto_lora_run_cannot_keep_is_refused_in_one_line(tiny_llama, data, capsys):
    with pytest.raises(LlmclfError, match="--pooling auto with LoRA .*--resume"):
        HeadClassifier(tiny_llama, pooling="auto", resume=True).resolve_config()
    HeadClassifier(tiny_llama, pooling="auto", lora="none", resume=True).resolve_config()
    run = data / "never"
    assert (
        cli_train(tiny_llama, data / "d.csv", run, "--pooling", "auto", "--keep-checkpoints") == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--keep-checkpoints" in err and len(err.splitlines()) == 1
    assert not run.exists()
