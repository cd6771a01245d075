"""The paper's claims (arXiv 2512.12677), tested: issue 19.

    results.py  a finished run folder -> one small JSON record (metrics + test predictions)
    claims.py   the comparisons each claim needs and the verdict rules, on those records
    render.py   EXPERIMENTS.md and its figures, from the claims
    run.py      the study: the grids of examples/study/ in order, the steps a grid cannot
                express (calibrate, zero-shot, distill), collecting, rendering, timing

``python benchmarks/study.py`` runs it all (``make study``); ``--report-only`` re-renders
EXPERIMENTS.md from the checked-in records (``make study-report``).
"""
