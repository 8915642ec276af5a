"""Zoos: a user's models and their records fitted once, then ranked for any new task's data
(:func:`fit_zoo`, :func:`load_zoo`, :meth:`Zoo.rank`), and the tasks' data readers."""
