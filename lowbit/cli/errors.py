"""Map LowbitError to one line on stderr and exit code 2, with no traceback."""

from __future__ import annotations

import sys

import click

from lowbit.errors import LowbitError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def run_cli(group: click.Group) -> int:
    try:
        rv = group.main(standalone_mode=False)  # ctx.exit(n) comes back here as the return value n
    except LowbitError as e:
        click.echo(f"lowbit: error: {e}", err=True)
        return EXIT_BAD_INPUT
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("lowbit: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("lowbit: interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else EXIT_OK
