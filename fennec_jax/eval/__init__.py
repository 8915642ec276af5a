"""Evaluation: ``metrics`` (ranking metrics, vectorised over tasks), ``protocol`` (the one
evaluation loop with its splits: tasks out, models out, architectures out) and ``reports``
(the one report writer) with ``html_report`` (the HTML page and figure plumbing it shares with
the zoo's ranking page). Import the modules themselves."""
