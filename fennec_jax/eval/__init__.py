"""Evaluation: ``metrics`` (ranking metrics, vectorised over tasks), ``protocol`` (the one
evaluation loop with its splits: tasks out, models out, architectures out) and ``reports``
(the one report writer). Import the modules themselves."""
