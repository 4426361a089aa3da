"""``python -m hpctune.train RECIPE.yaml [--check]``: what launch.sh starts on every process.

``--check`` runs the preflight checks only (model, target modules, dataset, versions) and
trains nothing. Errors in the recipe end as one line on stderr and exit code 2; a failed
adapter check or another run failure exits 1.
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m hpctune.train RECIPE.yaml [--check]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    if len(rest) != 1 or rest[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    from hpctune.errors import ConfigError, RunError
    from hpctune.train import attempt
    ctx = attempt.init(None if check else rest[0])
    try:
        return _run(check, rest[0])
    except BaseException as e:
        if not isinstance(e, (SystemExit, KeyboardInterrupt)):
            attempt.record_error(ctx, e)  # for the attempt's cause (hpctune.run.causes)
        raise


def _run(check: bool, recipe_path: str) -> int:
    from hpctune.errors import ConfigError, RunError
    rest = [recipe_path]
    try:
        if check:
            from hpctune.train.run import check as run_check
            info = run_check(rest[0])
            print(f"hpctune train: {rest[0]}: ok ({info['train_rows']} train rows, {info['eval_rows']} eval rows, "
                  f"model {info['model_path']})")
            return 0
        from hpctune.train import dist
        from hpctune.train.run import clean_exit, main as run_main
        code = run_main(rest[0])
        if clean_exit():
            dist.shutdown()  # only on success: after an error a barrier could wait forever
        return code
    except (ConfigError, RunError) as e:
        from hpctune.train import attempt
        attempt.record_error(attempt.current(), e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
