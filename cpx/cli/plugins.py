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


def competition_row(entry, host) -> dict:
    """One competition for `cpx competitions`: name, title, origin, shape, metric and format."""
    c = entry.target
    size = c.size if isinstance(c.size, str) else "x".join(map(str, (c.size, c.size) if isinstance(c.size, int)
                                                           else c.size))
    metric = c.metric.name + "".join(f" {k}={v}" for k, v in c.metric.options.items()) \
        + (f" (x{c.metric.scale:g})" if c.metric.scale != 1 else "")
    return {"name": c.name, "title": c.title, "origin": entry.origin, "classes": c.num_classes,
            "channels": c.channels, "size": size, "metric": metric,
            "submission": c.submission.name + (" + solution/" if c.submission.solution else ""),
            "synthetic": c.synthesize is not None}


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

    @app.command("competitions")
    def competitions_command(
        name: Annotated[str, typer.Argument(help="show this competition's whole profile")] = "",
        json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ):
        """List competition profiles (built-in, plugins', and the workspace's competitions/*.yaml)
        with their origin, metric and submission format; or show one in full."""
        host = _common.host()
        if name:
            profile = host.competition(name)
            data = profile.model_dump(mode="json", exclude_none=True)
            if json_:
                print_json(data)
            else:
                import yaml

                console.print(yaml.safe_dump(data, sort_keys=False, width=110), highlight=False)
            return
        rows = [competition_row(entry, host) for entry in host.competitions]
        broken = [{"name": n, "origin": origin, "error": error} for n, origin, error in host.competitions.broken()]
        if json_:
            print_json({"competitions": rows, "broken": broken})
            return
        table = Table(title="competitions")
        for col in ("name", "origin", "classes", "size", "metric", "submission", "synthetic"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(f"[bold]{r['name']}[/]\n[dim]{r['title']}[/]", r["origin"], str(r["classes"]),
                          f"{r['size']}, {r['channels']} ch", r["metric"], r["submission"],
                          "yes" if r["synthetic"] else "-")
        console.print(table)
        for b in broken:
            _common.err_console.print(f"[yellow]warning:[/] {b['origin']}: {b['error']}", highlight=False,
                                      soft_wrap=True)

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
