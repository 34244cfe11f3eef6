"""vramq's start-up hook for job processes: standard library only, it runs in the researcher's environment.

As soon as TensorFlow is imported, before any op can run, every visible GPU gets one logical device whose
memory_limit is VRAMQ_TF_MEMORY_LIMIT_MB (the job's request less the per-process overhead). Memory growth
comes from TF_FORCE_GPU_ALLOW_GROWTH=true in the environment: set_memory_growth is never called, since
with a memory limit on the same device TensorFlow refuses it or silently drops growth.
"""

import importlib.machinery
import os
import sys

_LIMIT_VAR = "VRAMQ_TF_MEMORY_LIMIT_MB"


def _say(message):
    print(f"[vramq] {message}", file=sys.stderr, flush=True)


def apply_tensorflow_limit(tf):
    """Give every visible GPU a logical device capped at the job's limit."""
    limit = int(os.environ[_LIMIT_VAR])
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
    if gpus:
        _say(f"TensorFlow memory limit {limit} MB with growth on {len(gpus)} GPU(s)")


def install_keras_autolog(keras):
    import vramq_keras

    vramq_keras.install(keras)


class _ImportWatcher:
    """A meta path finder that runs a function on a module right after the module's own code ran."""

    def __init__(self, actions):
        self.actions = dict(actions)

    def find_spec(self, name, path=None, target=None):
        action = self.actions.pop(name, None)
        if action is None:
            return None
        if not self.actions and self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find and finder is not self else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            try:
                action(module)
            except Exception as exc:  # never break the researcher's script
                _say(f"could not set up {name}: {exc!r}")

        spec.loader.exec_module = exec_module
        return spec


def _chain_next_sitecustomize():
    """Run the sitecustomize this one shadows, if the environment has one further down sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_actions = {}
if os.environ.get(_LIMIT_VAR) and "tensorflow" not in sys.modules:
    _actions["tensorflow"] = apply_tensorflow_limit
if os.environ.get("VRAMQ_OUTPUT_DIR") and "keras" not in sys.modules:
    _actions["keras"] = install_keras_autolog
if _actions:
    sys.meta_path.insert(0, _ImportWatcher(_actions))

try:
    import importlib.util

    _chain_next_sitecustomize()
except Exception as exc:
    _say(f"the environment's own sitecustomize failed: {exc!r}")
