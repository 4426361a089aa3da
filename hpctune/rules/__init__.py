"""The rule book: every named check of hpctune, in one registry.

Where a rule goes (see book.py for the scopes):

- ``recipe.py``: the recipe alone (pure Python; also run by the node's preflight);
- ``cluster.py``: the resolved Job (hardware, partitions, network, this machine's paths),
  plus the declared layout rules that ``job.resolve`` raises;
- ``site.py``: the Job against the site's practicalities: the Hugging Face cache of offline
  nodes, container mounts, shared filesystems, checkpoint cadence against the time limit;
- ``timing.py``: checkpoint cadence against the time limit (the planner's time plan);
- ``memory.py``: memory-fits, the planner's memory plan;
- ``bundle.py``: the rendered run folder's files against each other;
- ``node.py``: declarations of what only a compute node can check (train/preflight).

``hpctune check --list`` prints ``RULES``; ``run(recipe=..., job=..., bundle=...)`` runs the
rules whose subject is given. Importing this package registers every rule.
"""

from hpctune.rules import bundle, cluster, memory, node, recipe, site, timing  # noqa: F401  (registers the rules)
from hpctune.rules.book import RULES, SCOPES, Finding, Rule, errors, listing, raise_errors, run, submit_blocking

__all__ = ["RULES", "SCOPES", "Finding", "Rule", "errors", "listing", "raise_errors", "run", "submit_blocking"]
