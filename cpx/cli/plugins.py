"""`cpx plugins`, `cpx competitions` and `cpx recipes`."""

from typing import Annotated

import typer
from rich.table import Table

from cpx.kernel.config import build_config, list_recipes

from . import _common
from ._common import console, print_json
from .options import Json

app = typer.Typer()


@app.command("plugins")
def plugins_command(json_: Json = False):
    """List every model, loss, augmentation, post-processor and competition, with origin and options."""
    host = _common.host()
    rows = plugin_listing(host)
    if json_:
        print_json({"components": rows, "failures": host.failures})
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
    json_: Json = False,
):
    """List competition profiles (built-in, plugins', and the workspace's competitions/*.yaml)
    with their origin, metric and submission format; or show one in full."""
    host = _common.host()
    if name:
        _print_mapping(host.competition(name).model_dump(mode="json", exclude_none=True), json_, width=110)
        return
    usable, unusable = host.checked_competitions()
    rows = [competition_row(entry) for entry in usable]
    broken = [{"name": n, "origin": origin, "error": error} for n, origin, error in unusable]
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
    _common.warn(f"competition {b['name']} is broken (commands naming it refuse it): "
                 + (b["error"] if b["error"].startswith(b["origin"]) else f"{b['origin']}: {b['error']}")
                 for b in broken)


@app.command("recipes")
def recipes_command(
    name: Annotated[str, typer.Argument(help="show this recipe's fully resolved config")] = "",
    json_: Json = False,
):
    """List recipes (built-in and the workspace's experiments/*.yaml), or show one resolved."""
    ws = _common.workspace()
    if name:
        config, _ = build_config(name, {}, ws.experiments_dir, _common.host())
        _print_mapping(config.model_dump(mode="json"), json_)
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


def plugin_listing(host) -> list[dict]:
    """One row per registered component: kind, name, origin, description and options."""
    rows = []
    for kind, registry in host.registries.items():
        for entry in registry:
            rows.append({"kind": kind, "name": entry.name, "origin": entry.origin,
                         "description": entry.description, "options": entry.options_schema()})
    return rows


def competition_row(entry) -> dict:
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


def _print_mapping(data: dict, json_: bool, width: int = 80) -> None:
    """A whole profile or config: JSON, or YAML as it would be written."""
    if json_:
        print_json(data)
        return
    import yaml

    console.print(yaml.safe_dump(data, sort_keys=False, width=width), highlight=False)
