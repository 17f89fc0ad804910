"""Evaluation (METHODS.md §6): benchmark readers, ranking metrics, cached encoding, results.

Every benchmark becomes a list of :class:`~muco.evaluation.tasks.RankingTask` (one per dataset):
queries, a pool of candidates and, per query, the candidates it is ranked against and which of
them are positive. One scorer, one encoder and one results store then serve all benchmarks.
"""
