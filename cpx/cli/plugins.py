"""`cpx plugins` and `cpx recipes`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cpx.kernel.config import build_config, list_recipes

from . import _common
from ._common import console, print_json


def plugin_listing(host) -> list[dict]:
    rows = []
    for kind, registry in host.registries.items():
        for entry in registry:
            rows.append({"kind": kind, "name": entry.name, "origin": entry.origin,
                         "description": entry.description, "options": entry.options_schema()})
    return rows


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins_command(json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False):
        """List every model, loss, augmentation, post-processor and competition, with origin and options."""
        rows = plugin_listing(_common.host())
        if json_:
            print_json({"components": rows, "failures": _common.host().failures})
            return
        table = Table(title="cpx plugins")
        for col in ("kind", "name", "origin", "options"):
            table.add_column(col, overflow="fold")
        for row in rows:
            opts = ", ".join(f"{o['name']}={o['default']!r}" for o in row["options"])
            table.add_row(row["kind"], f"[bold]{row['name']}[/]\n[dim]{row['description']}[/]", row["origin"], opts)
        console.print(table)

    @app.command("recipes")
    def recipes_command(
        name: Annotated[str, typer.Argument(help="show this recipe's fully resolved config")] = "",
        json_: Annotated[bool, typer.Option("--json")] = False,
    ):
        """List recipes (built-in and the workspace's experiments/*.yaml), or show one resolved."""
        ws = _common.workspace()
        if name:
            config, _ = build_config(name, {}, ws.experiments_dir, _common.host())
            data = config.model_dump(mode="json")
            if json_:
                print_json(data)
            else:
                import yaml

                console.print(yaml.safe_dump(data, sort_keys=False), highlight=False)
            return
        recipes = list_recipes(ws.experiments_dir)
        if json_:
            print_json(recipes)
            return
        table = Table(title="recipes")
        table.add_column("name")
        table.add_column("source")
        for recipe, source in recipes.items():
            table.add_row(recipe, source)
        console.print(table)
