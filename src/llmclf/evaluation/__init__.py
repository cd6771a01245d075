"""Pure evaluation on arrays: ``metrics`` (accuracy, F1, thresholds), ``stats`` (McNemar,
paired bootstrap, Holm), ``calibration`` (ECE, Brier, temperature scaling),
``comparison`` (the report's numbers), and ``report`` / ``tables`` / ``plots`` (rendering
it). Nothing here reads or writes a folder."""
