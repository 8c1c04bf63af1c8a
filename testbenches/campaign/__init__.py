"""Regression campaigns: a matrix of targets, hypothesis profiles and seeds run on Dask distributed,
merged into one report, with a history of every campaign in SQLite (``vdpa-bench campaign FILE.toml``).

* :mod:`.matrix` - the campaign file (TOML), its validation and the cells it expands to.
* :mod:`.cell` - one cell: the suite in a process of its own, its ``results.json`` returned.
* :mod:`.engine` - the Dask client (LocalCluster, an existing scheduler, or dask-jobqueue), RTL builds
  shared by cells, the progress bar.
* :mod:`.merge` - every cell merged: the id-by-cell matrix, failures by id with reproduction commands, JUnit.
* :mod:`.history` - campaigns, cells and verdicts in one SQLite file; what changed since the last campaign.
* :mod:`.html` - the page a person opens (charts over the history, heat map, filters).
* :mod:`.run` - ``vdpa-bench campaign``.
"""
