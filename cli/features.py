"""Commands on features: ``embed``, ``encoders``, ``export-features``."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ._common import (COUNT, DEVICE, ENCODER, OVERWRITE_HELP, TEXT, WEIGHTS, Name, exit_for, out, out_folder,
                      overwrite_option, precision_option, reporter, scheduler_option, stain_option, stain_reference_option,
                      summary_table)

__all__ = ["embed", "encoders", "export_features"]


@click.command()
@click.argument("stores", nargs=-1, required=True)
@click.option("--encoder", default="handcrafted", show_default=True, type=ENCODER,
              help="Preset name (see `slidestream encoders`) or any timm model name.")
@click.option("--weights", default="hub", show_default=True, type=WEIGHTS,
              help="'hub' (download, gated models need a token), a local .safetensors/.pth file, or 'none' "
                   "(random init, marked in the store).")
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="cpu, cuda, cuda:1 … or mps.")
@click.option("--batch-size", type=COUNT, default=None, help="Forward batch (default: one store chunk).")
@stain_option("Normalise tiles on the device before the encoder (stain estimated once per slide); for stores "
              "whose patches were not normalised at tiling.")
@stain_reference_option
@click.option("--overwrite", is_flag=True, help="Recompute existing features.")
@click.option("--allow-mpp-mismatch", is_flag=True,
              help="Embed stores tiled at a pixel size more than 10 % away from the encoder's (the mpp column of "
                   "`slidestream encoders --json`; 0.5 µm/px for the built-in presets): such stores are refused "
                   "otherwise, since the model would see cells at another scale than it learned. With this flag "
                   "they are embedded with a warning, and the mismatch is recorded in the features' attributes "
                   "(mpp_mismatch) and in run-embed.json. The handcrafted encoder is checked too (its statistics "
                   "assume 0.5 µm/px); plain timm model names declare no pixel size and are never checked.")
@scheduler_option()
@precision_option(["auto", "float32", "bfloat16", "float16"], "the encoder")
def embed(stores, encoder, weights, device, batch_size, stain, stain_reference, overwrite, allow_mpp_mismatch,
          scheduler, precision):
    """Embed the tiles of STORES (store paths or folders of stores) into features/<encoder>."""
    from ..pipeline.embed import embed_batch
    from ..pipeline.inputs import collect_stores

    outcomes = embed_batch(collect_stores(stores), encoder, weights=weights, device=device, batch_size=batch_size,
                           overwrite=overwrite, stain=stain,
                           stain_reference=stain_reference, scheduler=scheduler, reporter=reporter(),
                           allow_mpp_mismatch=allow_mpp_mismatch, precision=precision)
    summary_table(f"embedding ({encoder})", outcomes, ["tiles", "patches_per_s"])
    exit_for(outcomes)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def encoders(as_json):
    """List the encoder presets: hub id, embedding dimension, input size, pooling, µm/px, licence, gating.

    "gated: yes" means the hub repository asks you to accept its terms first: do so on its page, then log in
    (`hf auth login`) before `--weights hub`.
    """
    from ..models import list_encoders_table

    rows = list_encoders_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = ("name", "hub_id", "embed_dim", "input_size", "pooling", "mpp", "dtype", "license", "gated")
    t = Table(title="encoder presets (any timm model name works too)")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        cells = {**r, "gated": "yes" if r["gated"] else "no"}
        t.add_row(*(str(cells.get(c) if cells.get(c) is not None else "-") for c in columns))
    out.print(t)


def _formats(text: str) -> str:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("h5", "pt")]
    if bad or not formats:
        raise ValueError(f"{text!r}: give h5, pt or h5,pt")
    return text


@click.command("export-features")
@click.argument("stores", nargs=-1, required=True)
@click.option("--encoder", required=True, type=TEXT, help="Which features/<encoder> to export.")
@out_folder("Output folder (see --layout).")
@click.option("--format", "fmt", default="h5,pt", show_default=True, type=Name("format list", _formats),
              help="Comma-separated: h5 (features + level-0 coords + the layout's attributes), pt (a plain (N, D) "
                   "float32 tensor).")
@click.option("--layout", type=click.Choice(["flat", "clam", "trident"]), default="flat", show_default=True,
              help="flat: <out>/<slide>.h5 and .pt with TRIDENT's coords attributes. "
                   "trident: TRIDENT's folders, <out>/patches/<slide>_patches.h5 and <out>/features_<encoder>/. "
                   "clam: CLAM's folders, <out>/h5_files/, <out>/pt_files/, <out>/patches/<slide>.h5 and "
                   "<out>/slide_ids.csv; patch_level/patch_size are the level and size slidestream read, so CLAM "
                   "re-reads the same pixels with: python extract_features_fp.py --data_h5_dir OUT "
                   "--data_slide_dir SLIDES --slide_ext .svs --csv_path OUT/slide_ids.csv --feat_dir FEATS "
                   "--target_patch_size TILE_SIZE (the --tile-size the stores were cut with).")
@overwrite_option(OVERWRITE_HELP)
def export_features(stores, encoder, out, fmt, layout, overwrite):
    """Write the features of STORES as HDF5 and .pt bags, so other MIL code (CLAM, TRIDENT) can use them, and
    re-read the same tiles from the slides if it wants to."""
    from ..pipeline.export import export_batch
    from ..pipeline.inputs import collect_stores

    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    outcomes = export_batch(collect_stores(stores), encoder, out, formats, layout=layout, reporter=reporter(),
                            overwrite=overwrite)
    summary_table("export", outcomes, list(formats))
    exit_for(outcomes)
