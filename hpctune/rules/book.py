"""The rule book's machinery: Finding, Rule, the registry and how rules are run.

A rule has an id (what `hpctune check --list` prints and every finding carries), a summary,
the numbered user pains it prevents, and a scope that says what it looks at:

- ``recipe``: the recipe alone. Pure Python, no profile, no files: the login node runs it on
  the resolved recipe and the compute node's preflight runs the same function on the
  bundle's recipe.yaml, so the two cannot disagree.
- ``job``: the resolved Job (profile + recipe + layout): hardware, partitions, memory.
- ``bundle``: the rendered run folder's files, read back (a template bug or a hand edit).
- ``node``: only a compute node can know (installed versions, GPUs present, a token, the
  model and data reachable). Declared here for ``--list``; train/preflight enforces them.

A rule without a function is *declared*: it is enforced where a value cannot exist without
it (``job.resolve`` cannot build a Job for a partition that does not exist), and is listed
here so that ``--list`` is generated, never hand-kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

from hpctune.errors import ConfigError, ConfigErrors

Severity = Literal["error", "warning"]
Scope = Literal["recipe", "job", "bundle", "node"]
SCOPES: tuple[str, ...] = ("recipe", "job", "bundle", "node")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    source: str
    field: str
    message: str
    fix: str = ""

    def as_error(self) -> ConfigError:
        text = self.message + (f"; fix: {self.fix}" if self.fix else "")
        return ConfigError(self.source, self.field, text, rule=self.rule)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "severity": self.severity, "source": self.source, "field": self.field,
                "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Rule:
    id: str
    summary: str
    pains: tuple[int, ...]
    scope: Scope
    fn: Callable[..., Iterable[Finding]] | None = None
    only_if_clean: bool = False  # run only when no other rule found an error (memory-fits)
    enforced_by: str = ""        # declared rules: the module that raises them
    blocks_submit: bool = False  # a warning for `check`, but `submit` refuses it without --force


RULES: list[Rule] = []


def _add(r: Rule) -> None:
    if r.scope not in SCOPES:
        raise ValueError(f"rule {r.id}: scope {r.scope!r} is not one of {SCOPES}")
    if any(x.id == r.id and x.scope == r.scope for x in RULES):
        raise ValueError(f"rule {r.id} ({r.scope}) is registered twice")
    RULES.append(r)


def rule(rule_id: str, summary: str, *, scope: Scope, pains: tuple[int, ...] = (), only_if_clean: bool = False,
         blocks_submit: bool = False):
    """Register ``fn(subject) -> Iterable[Finding]``; the subject is what the scope names.
    ``blocks_submit``: its warnings let `check` pass but stop `submit` unless --force (a
    job that would surely fail on the node for a reason only this machine's view can miss)."""
    def register(fn):
        _add(Rule(rule_id, summary, pains, scope, fn, only_if_clean, blocks_submit=blocks_submit))
        return fn
    return register


def declare(rule_id: str, summary: str, *, scope: Scope, enforced_by: str, pains: tuple[int, ...] = ()) -> None:
    """A rule enforced elsewhere (it raises ConfigError with this id), listed for ``--list``."""
    _add(Rule(rule_id, summary, pains, scope, None, enforced_by=enforced_by))


def listing() -> list[Rule]:
    """Every rule, by scope (recipe, job, bundle, node), in registration order within one."""
    return sorted(RULES, key=lambda r: SCOPES.index(r.scope))


def run(*, recipe=None, job=None, bundle=None) -> list[Finding]:
    """Every finding of every rule whose subject is given, errors first."""
    subjects = {"recipe": recipe, "job": job, "bundle": bundle}
    chosen = [r for r in RULES if r.fn is not None and subjects.get(r.scope) is not None]
    out: list[Finding] = []
    for r in chosen:
        if not r.only_if_clean:
            out.extend(r.fn(subjects[r.scope]) or ())
    if not any(f.severity == "error" for f in out):
        for r in chosen:
            if r.only_if_clean:
                out.extend(r.fn(subjects[r.scope]) or ())
    return sorted(out, key=lambda f: f.severity != "error")


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def submit_blocking(findings: Iterable[Finding]) -> list[Finding]:
    """Warnings of rules that stop `submit` without --force."""
    blocking = {r.id for r in RULES if r.blocks_submit}
    return [f for f in findings if f.severity != "error" and f.rule in blocking]


def raise_errors(findings: Iterable[Finding]) -> list[Finding]:
    """Raise one ConfigError (several: ConfigErrors) for the error findings; return the rest."""
    findings = list(findings)
    bad = [f.as_error() for f in errors(findings)]
    if bad:
        raise bad[0] if len(bad) == 1 else ConfigErrors(bad)
    return findings
