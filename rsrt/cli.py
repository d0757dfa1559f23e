"""The `rsrt` command: one click CLI that composes `rsrt.search` (read side) and `rsrt.ingest` (write side)."""

from __future__ import annotations

import click

from rsrt import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rsrt")
def main() -> None:
    """rsrt: training-free text-to-text retrieval for remote sensing image archives on OpenSearch."""


def _register() -> None:
    """Sub-command groups live beside the code they drive; `rsrt node` stays import-light (imports inside)."""
    from rsrt.cli_bench import bench
    from rsrt.cli_dashboards import dashboards
    from rsrt.cli_demo import demo
    from rsrt.cli_eval import eval_command
    from rsrt.cli_index import index
    from rsrt.cli_ingest import ingest
    from rsrt.cli_model import model
    from rsrt.cli_node import node
    from rsrt.cli_search import search_command
    from rsrt.cli_serve import serve

    main.add_command(node)
    main.add_command(index)
    main.add_command(ingest)
    main.add_command(search_command)
    main.add_command(eval_command)
    main.add_command(serve)
    main.add_command(demo)
    main.add_command(bench)
    main.add_command(dashboards)
    main.add_command(model)


_register()


if __name__ == "__main__":  # pragma: no cover
    main()
