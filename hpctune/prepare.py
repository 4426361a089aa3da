"""The one composition root: profile + recipe + overrides -> (Job, findings).

    load the profile and the recipe (``--set`` overrides applied)
      -> auto layout (``layout.nodes: auto``: the planner picks nodes, GPUs, ZeRO, offload)
      -> resolve the Job (layout rules raise here: no Job without a partition)
      -> run the rules: recipe rules on the recipe as the run folder will store it, then the
         job rules (memory-fits last)

``hpctune check``, ``render``, ``submit``, ``plan`` and ``sweep`` all call ``prepare`` and
nothing else composes these steps, so they cannot disagree about an input. Each decides
what to do with the findings: ``check`` prints them, ``render`` and ``submit`` stop on an
error (``submit --force`` records it instead), ``plan`` shows the plan anyway.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from hpctune import profile as profile_mod
from hpctune import recipe as recipe_mod
from hpctune import rules
from hpctune.job import Job, resolve, resolved_recipe
from hpctune.plan import job_plan
from hpctune.profile import ClusterProfile
from hpctune.recipe import Recipe


class Prepared(NamedTuple):
    job: Job
    findings: list  # rules.Finding, errors first

    @property
    def errors(self) -> list:
        return rules.errors(self.findings)

    @property
    def warnings(self) -> list:
        return [f for f in self.findings if f.severity != "error"]

    def raise_errors(self) -> "Prepared":
        """Stop with one line per error finding (exit 2); else return self."""
        rules.raise_errors(self.findings)
        return self


def prepare(cluster: str | ClusterProfile, recipe: str | Recipe, overrides: tuple[str, ...] | list[str] = ()) -> Prepared:
    """Load, lay out, resolve and check. Raises ConfigError for input no Job can be built from
    (schema errors, layout rules, auto layout that finds nothing); every other problem is a
    finding. ``cluster``/``recipe`` may be already loaded (``hpctune sweep`` loads them once);
    ``overrides`` then must be empty (apply them when loading)."""
    prof = cluster if isinstance(cluster, ClusterProfile) else profile_mod.load(cluster)
    if isinstance(recipe, Recipe):
        if overrides:
            raise ValueError("overrides apply when the recipe is loaded; pass a recipe path")
        rec = recipe
    else:
        rec = recipe_mod.load(recipe, tuple(overrides))
    if rec.layout.nodes == "auto":
        rec = auto_layout(prof, rec)
    job = resolve(prof, rec)
    return Prepared(job, rules.run(recipe=resolved_recipe(job), job=job))


def auto_layout(prof: ClusterProfile, rec: Recipe) -> Recipe:
    """``rec`` with `layout.nodes: auto` replaced by the planner's best layout (a probe Job at
    1 node x every GPU gives the planner the partition and node to search)."""
    probe = resolve(prof, replace(rec, layout=replace(rec.layout, nodes=1, gpus_per_node="all")))
    return job_plan.choose_layout(probe)
