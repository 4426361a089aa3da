"""The run folder and the life of a run.

- ``folder``: the run folder's layout and its typed readers and writers, used on the login
  node AND on the compute nodes (pure Python: never imports torch or submitit);
- ``registry``: the runs registry (one JSON record per run) and training progress;
- ``submit``: the one submit service (render, hand over to a backend, register);
- ``backends``: where a run runs (``slurm`` through submitit, ``local`` on this machine),
  behind one small interface.

Importing this package imports none of its modules: the compute node reads only ``folder``.
"""
