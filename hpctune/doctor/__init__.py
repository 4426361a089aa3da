"""``hpctune doctor``: prove a cluster profile on the live cluster before the first real run.

- ``job``: the login side: render the probe job (templates doctor.sbatch.j2, probe.sh.j2),
  submit it, send USR2, try ``scontrol requeue``, collect every node's report;
- ``probe``: what runs on every node (after the profile's set-up lines);
- ``checks``: pure: the reports -> a PASS/FAIL table with the fix for each failure, and the
  figures recorded in the profile.
"""
