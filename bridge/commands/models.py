"""``a2e-bridge models ...``: build, inspect and manage model files."""

from __future__ import annotations

import click

from bridge.cli import friendly


@click.group()
def models() -> None:
    """Model files: build synthetic ones."""


@models.command("synth")
@click.option("--kind", type=click.Choice(["lam", "wav2arkit"]), default="lam", show_default=True)
@click.option("--size", type=click.Choice(["tiny", "full"]), default="tiny", show_default=True)
@click.option("--oracle", is_flag=True, help="build the oracle test model instead")
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="graph file to write (weights go to OUT.data)",
)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly
def models_synth(kind: str, size: str, oracle: bool, out: str, seed: int) -> None:
    """Build a synthetic model with the real model's interface (no download needed)."""
    from bridge.model.graph import count_parameters, find_layernorm_chains
    from bridge.model.synth import synthesize

    click.echo(f"building {'oracle ' if oracle else ''}{kind} ({size}) ...", err=True)
    path = synthesize(kind, size, out, oracle=oracle, seed=seed)
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    click.echo(
        f"wrote {path} ({count_parameters(m) / 1e6:.1f} M parameters, "
        f"{len(find_layernorm_chains(m))} decomposed LayerNorm chains)"
    )
