"""Which models to fine-tune next on a new task, and why.

  ./run.sh suggest --task=my_task --budget=3                       # the default zoo
  ./run.sh suggest --zoo=my_zoo --task=data/flowers --probes=resnet50=0.91 --budget=2 --policy=dopt

--policy: thompson (hunts the best model: the chance each pick is the best model not yet
fine-tuned), dopt (reduces the uncertainty about the task vector: expected information, nats),
mixed (dopt, then thompson for the last pick), random. Probes so far (--probes) are left out and condition the choice. Prints the models, their
expected gain and predicted score (the zoo's units), best first.
"""

from absl import flags

from experiments import cli, zoo_flags

_BUDGET = flags.DEFINE_integer("budget", 3, "How many models to suggest.", lower_bound=1)
_POLICY = flags.DEFINE_string("policy", "thompson", "thompson | dopt | mixed | random (NAME:key=value+... configures it).")
_SEED = flags.DEFINE_integer("seed", 0, "Randomness of thompson / random.")


def main():
    zoo, encoder, probes, metadata = zoo_flags.task_inputs()
    picks = zoo.suggest(zoo_flags.TASK.value, budget=_BUDGET.value, policy=_POLICY.value, probes=probes,
                        metadata=metadata, encoder=encoder, seed=_SEED.value)
    print(f"fine-tune next ({_POLICY.value}; gain = {picks[0]['gain_means']}):")
    for i, pick in enumerate(picks, start=1):
        print(f"{i:>3}  {pick['model']:<40} gain {pick['gain']:.3g}  predicted {pick['predicted_score']:.4g}")


if __name__ == "__main__":
    cli.run(main)
