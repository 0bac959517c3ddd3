"""``a2e-bridge bench``: the whole pipeline at real-time pace into real receivers, measured."""

from __future__ import annotations

import json

import click

from bridge.cli.common import check_writable, config_option, friendly, setup_logging, write_json
from bridge.config import load_config


@click.command()
@click.option("--model", default="synthetic-full", show_default=True, metavar="PRESET|PATH")
@click.option("--seconds", type=click.FloatRange(1, 3600), default=60, show_default=True)
@click.option("--json", "json_path", metavar="FILE", help="write the results here")
@click.option(
    "--input",
    "input_file",
    metavar="FILE",
    help="audio file to play (default: a speech-like 48 kHz signal)",
)
@click.option("--providers", default=None, metavar="LIST", help="e.g. cuda,cpu (default: config)")
@click.option("--lookahead", type=click.IntRange(min=0), default=None, help="lookahead_frames")
@click.option("--window", "window_s", type=float, default=None, help="model.window_s (seconds)")
@click.option("--cuda-graph/--no-cuda-graph", default=None, help="model.cuda_graph (default: config)")
@click.option("--streams", type=click.IntRange(1, 1024), default=None, metavar="N",
              help="N performers, each its own channel of one N-channel file of distinct speech-like audio")
@config_option()
@friendly
def bench(model: str, seconds: float, json_path: str | None, input_file: str | None,
          providers: str | None, lookahead: int | None, window_s: float | None, cuda_graph: bool | None,
          streams: int | None, config_path: str | None) -> None:  # fmt: skip
    """Run the whole pipeline from a file at real-time pace into all outputs and report."""
    from bridge.bench import run_bench

    setup_logging(False)
    if json_path:
        check_writable(json_path, "--json")
    result = run_bench(model=model, seconds=seconds, input_file=input_file,
                       providers=providers, lookahead=lookahead, window_s=window_s,
                       cuda_graph=cuda_graph, streams=streams,
                       config=load_config(config_path))  # fmt: skip
    click.echo(json.dumps(result, indent=2))
    if json_path:
        write_json(json_path, result)
