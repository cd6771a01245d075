"""Approach 2, instruction tuning: ``model`` (the classifier and its training batches),
``prompts`` (prompt formats and chat templates), ``verbalizer`` (the words each label is
answered with, and parsing generated answers), ``scoring`` (label scoring over a shared
prompt pass, and greedy generation)."""
