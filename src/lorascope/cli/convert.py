"""`lorascope convert SRC DST --to FORMAT`: parse, call lorascope.convert.convert_file, report."""

from __future__ import annotations

import argparse
import json

from ..convert import convert_file
from ..formats import FORMATS
from ..textsafe import clean
from ._output import emit


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="adapter directory or .safetensors file")
    p.add_argument("dest", help="output: a directory for peft, a .safetensors file for the others")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="target format")
    p.add_argument("--format", help="force the input format instead of detecting it")
    p.add_argument(
        "--component",
        help="diffusers component (unet, transformer, text_encoder, ...): the prefix for names without one, "
        "or the one to keep when converting a multi-component file to PEFT",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file (never the input)")
    p.add_argument(
        "--lora-only",
        action="store_true",
        help="write the LoRA layers only, leaving out the full weights saved beside them "
        "(modules_to_save, a classification head, embeddings)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = convert_file(
        args.src,
        args.dest,
        to=args.to,
        format=args.format,
        component=args.component,
        overwrite=args.force,
        lora_only=args.lora_only,
    )
    if not args.json:  # the JSON summary holds them under "notes"
        emit("".join(f"note: {note}\n" for note in result.notes))
    if args.json:
        emit(json.dumps(result.__dict__, sort_keys=True) + "\n")
    else:
        r = result
        emit(clean(f"wrote {r.n_layers} layers: {r.source_format} {r.source} -> {r.format} {r.dest}") + "\n")
    return 0
