"""Keras autolog for vramq jobs, installed by sitecustomize when `keras` is imported.

Standard library only at import time (it runs in the researcher's environment); Keras is passed in.
Every `Model.fit` gets, after the script's own callbacks:
- per-epoch metrics, validation included, appended live to $VRAMQ_OUTPUT_DIR/metrics.jsonl (left alone
  when the script writes that file itself);
- the fit's progress, rewritten after every epoch to $VRAMQ_OUTPUT_DIR/progress.json: epochs done, planned,
  the epoch this fit began at and when it began (the scheduler dates the job's end from its pace);
- the best model (by `monitor`: val_loss with validation data, else loss) saved as
  $VRAMQ_OUTPUT_DIR/models/<model name>.keras, unless the script saves its own models there;
- a resumable checkpoint of the latest epoch (weights, optimizer state, epoch) under
  $VRAMQ_OUTPUT_DIR/checkpoints/fit-<n>/, restored by the next attempt when the model matches;
- the job's optional `keras` settings: seed, early_stopping, reduce_lr_on_plateau, monitor;
- a stop at the end of the epoch once $VRAMQ_STOP_FILE exists (the job is preempted), right after its
  checkpoint is saved, with exit code $VRAMQ_STOP_EXIT: the next attempt loses no work.
A failure inside autolog is reported on stderr and training goes on.
"""

import inspect
import json
import math
import os
import re
import sys
import time

_state: dict = {"fits": 0, "epoch_offset": 0, "metrics_bytes": None, "own_models": set(), "script_metrics": False}
_MAXIMISED = ("acc", "auc", "precision", "recall", "f1")


def _say(message):
    print(f"[vramq] {message}", file=sys.stderr, flush=True)


def _settings():
    return json.loads(os.environ.get("VRAMQ_KERAS") or "{}")


def install(keras):
    """Wrap keras.Model.fit (Sequential, Functional and subclassed models all inherit it)."""
    if os.environ.get("VRAMQ_AUTOLOG") == "0" or not os.environ.get("VRAMQ_OUTPUT_DIR"):
        return
    seed = _settings().get("seed")
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
        _say(f"random seed {seed}")
    original = keras.Model.fit
    if getattr(original, "__vramq__", False):
        return
    signature = inspect.signature(original)

    def fit(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
            bound.arguments["callbacks"] = _callbacks(keras, self, bound.arguments)
            args, kwargs = bound.args[1:], bound.kwargs
        except Exception as exc:
            _say(f"autolog is off for this fit: {exc!r}")
        return original(self, *args, **kwargs)

    fit.__vramq__ = True
    fit.__doc__ = original.__doc__
    keras.Model.fit = fit


def _callbacks(keras, model, arguments):
    settings = _settings()
    output = os.environ["VRAMQ_OUTPUT_DIR"]
    has_validation = arguments.get("validation_data") is not None or (arguments.get("validation_split") or 0) > 0
    monitor = settings.get("monitor") or ("val_loss" if has_validation else "loss")
    callbacks = list(arguments.get("callbacks") or [])
    present = {type(callback) for callback in callbacks}
    for key, kind in (
        ("early_stopping", keras.callbacks.EarlyStopping),
        ("reduce_lr_on_plateau", keras.callbacks.ReduceLROnPlateau),
    ):
        if settings.get(key) is not None and not any(issubclass(t, kind) for t in present):
            callbacks.append(kind(**{"monitor": monitor, **settings[key]}))
    fit_index = _state["fits"]
    _state["fits"] += 1
    if not any(issubclass(t, keras.callbacks.BackupAndRestore) for t in present):
        callbacks.append(_resumable(keras)(os.path.join(output, "checkpoints", f"fit-{fit_index}")))
    callbacks.append(_autolog(keras)(output, monitor))
    return callbacks


def _resumable(keras):
    class VramqBackup(keras.callbacks.BackupAndRestore):
        """BackupAndRestore that starts over, and says so, when the checkpoint does not fit the model."""

        def on_train_begin(self, logs=None):
            if not os.path.exists(self._weights_path):
                return
            try:
                super().on_train_begin(logs)
                _say(f"resuming from the checkpoint of an earlier attempt at epoch {self.model._initial_epoch}")
            except Exception as exc:
                _say(f"the earlier attempt's checkpoint does not match this model ({exc!r}): starting over")
                self.model._initial_epoch = None
                for path in (self._weights_path, self._training_metadata_path):
                    if os.path.exists(path):
                        os.remove(path)

        def on_epoch_end(self, epoch, logs=None):
            try:
                super().on_epoch_end(epoch, logs)
            except Exception as exc:
                _say(f"could not write the epoch checkpoint: {exc!r}")

    return VramqBackup


def _autolog(keras):
    class VramqAutolog(keras.callbacks.Callback):
        def __init__(self, output, monitor):
            super().__init__()
            self.metrics_path = os.path.join(output, "metrics.jsonl")
            self.models_dir = os.path.join(output, "models")
            self.monitor = monitor
            self.maximise = any(word in monitor for word in _MAXIMISED)
            self.best = None
            self.last_epoch = None
            self.first_epoch = None  # past epochs restored from a checkpoint are not this process's
            self.began = None  # when this fit began, past model building, data loading and any restore

        def on_epoch_end(self, epoch, logs=None):
            figures = {k: float(v) for k, v in (logs or {}).items() if _finite(v)}
            self.last_epoch = epoch
            if self.first_epoch is None:
                self.first_epoch = epoch
            for step in (self._write_metrics, self._save_best, self._write_progress):
                try:
                    step(epoch, figures)
                except Exception as exc:
                    _say(f"autolog: {step.__name__.strip('_')} failed: {exc!r}")
            stop = os.environ.get("VRAMQ_STOP_FILE")
            if stop and os.path.exists(stop):  # the checkpoint callback, before this one, has saved the epoch
                _say(f"stopping after epoch {_state['epoch_offset'] + epoch} (preempted): its checkpoint is saved")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(os.environ.get("VRAMQ_STOP_EXIT") or 1))

        def on_train_begin(self, logs=None):
            self.began = time.time()
            if _state["metrics_bytes"] is None:  # what was there before any fit is not the script's doing
                path = self.metrics_path
                _state["metrics_bytes"] = os.path.getsize(path) if os.path.exists(path) else 0

        def on_train_end(self, logs=None):
            if self.last_epoch is not None:
                _state["epoch_offset"] += self.last_epoch + 1

        def _write_metrics(self, epoch, figures):
            if _state["script_metrics"]:
                return
            size = os.path.getsize(self.metrics_path) if os.path.exists(self.metrics_path) else 0
            if size != _state["metrics_bytes"]:
                _state["script_metrics"] = True
                _say("the script writes metrics.jsonl itself; autolog leaves it alone")
                return
            line = (json.dumps({"epoch": _state["epoch_offset"] + epoch, **figures}) + "\n").encode()
            with open(self.metrics_path, "ab") as handle:
                handle.write(line)
            _state["metrics_bytes"] += len(line)

        def _write_progress(self, epoch, figures):
            total = (self.params or {}).get("epochs")
            if not total:
                return
            path = os.path.join(os.path.dirname(self.metrics_path), "progress.json")
            with open(path + ".tmp", "w") as handle:
                report = {"done": epoch + 1, "total": int(total), "start": self.first_epoch, "began": self.began}
                json.dump(report, handle)
            os.replace(path + ".tmp", path)  # a reader never sees half a file

        def _save_best(self, epoch, figures):
            value = figures.get(self.monitor)
            if value is None:
                return
            if self.best is not None and (value <= self.best if self.maximise else value >= self.best):
                return
            self.best = value
            os.makedirs(self.models_dir, exist_ok=True)
            theirs = [f for f in os.listdir(self.models_dir) if not f.startswith(".") and f not in _state["own_models"]]
            if theirs:
                return  # the script checkpoints its own models there
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model.name or "model") + ".keras"
            temporary = os.path.join(self.models_dir, ".vramq-saving-" + name)
            self.model.save(temporary)
            os.replace(temporary, os.path.join(self.models_dir, name))
            _state["own_models"].add(name)

    return VramqAutolog


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
