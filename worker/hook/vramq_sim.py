"""For jobs on simulated GPUs: declare the memory this process 'uses' (standard library only)."""

import json
import os


def use(mb, util=None):
    """Hold `mb` MiB (and `util` of the compute, 0..1) on every GPU this job was given, until the process exits."""
    directory = os.environ["VRAMQ_SIM_DIR"]
    for gpu in filter(None, os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")):
        path = os.path.join(directory, f"{os.getpid()}.{gpu}.json")
        with open(path + ".tmp", "w") as handle:
            json.dump({"gpu": int(gpu), "mb": int(mb), "util": util}, handle)
        os.replace(path + ".tmp", path)
