"""Approach 2, instruction tuning: ``model`` (the options and the classifier),
``batches`` (prompt + answer training rows, the answer loss), ``prompts`` (prompt formats
and chat templates), ``verbalizer`` (the words each label is answered with, and parsing
generated answers), ``scoring`` (label scoring over a shared prompt pass, generation)."""
