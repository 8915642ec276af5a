"""Writes a sample new task to try ``./run.sh rank`` on: handwritten digits 0, 3 and 9 (30
16-px PNGs each, from scikit-learn's digits), a class subset none of the default zoo's tasks has.

  ./run.sh sample_task --out=my_task && ./run.sh rank --task=my_task
"""

from absl import flags

from experiments import cli

_OUT = flags.DEFINE_string("out", "sample_task", "Folder to create (must not exist).")


def main():
    import os

    from fennec_jax.zoo.default import write_sample_task

    if os.path.exists(_OUT.value):
        raise cli.InputError(f"--out={_OUT.value}: already exists; choose a new folder")
    print(f"wrote {write_sample_task(_OUT.value)} (3 classes x 30 images); rank it with "
          f"./run.sh rank --task={_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
