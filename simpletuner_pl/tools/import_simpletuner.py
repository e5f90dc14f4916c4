"""Convert a SimpleTuner config into an experiment:

    python -m simpletuner_pl.tools.import_simpletuner config.json [multidatabackend.json] > conf/experiment/x.yaml
    python -m simpletuner_pl experiment=x

config.json may use SimpleTuner's `--key` spelling or bare keys; config.toml and a config.env (with
TRAINER_EXTRA_ARGS) work too. Without a dataloader file, config.json's `data_backend_config` is read if it exists.
The experiment states only what differs from simpletuner_pl's defaults; every option not carried over is listed on
stderr and at the end of the file with its reason. Exit status: 0 when the experiment composes and validates, 1
when it does not (the reason is printed), 2 when an input cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from simpletuner_pl.errors import UserError
from simpletuner_pl.tools.conversion import DEFAULT, Conversion
from simpletuner_pl.tools.convert import MISSING, convert
from simpletuner_pl.tools.experiment_yaml import settle
from simpletuner_pl.tools.simpletuner_files import read_backends, read_options

PROG = "python -m simpletuner_pl.tools.import_simpletuner"


def import_files(config: Path, dataloader: Optional[Path] = None) -> Tuple[str, Conversion, Optional[str]]:
    """(experiment text, the conversion, why it does not validate or None) for SimpleTuner's files; a `UserError`
    when one cannot be read."""
    options = read_options(config)
    if dataloader is None and options.get("data_backend_config"):
        candidates = [config.parent / str(options["data_backend_config"]), Path(str(options["data_backend_config"]))]
        dataloader = next((c for c in candidates if c.is_file()), None)
    backends = read_backends(dataloader) if dataloader is not None else None
    conv = convert(options, backends, config.name, dataloader.name if dataloader else "", config.parent)
    sources = config.name + (f" and {dataloader.name}" if dataloader else "")
    text, problem = settle(conv, sources, missing_overrides(conv))
    if problem:
        text += "# does not validate: " + problem.replace("\n", "\n#   ") + "\n"
    return text, conv, problem


def report(conv: Conversion, stream) -> None:
    """Every option not carried over, by reason; the defaults on one line each (they change nothing)."""
    for reason, entries in conv.left_by_reason().items():
        if reason == DEFAULT:
            print(f"{reason}: " + ", ".join(_short(e.source) for e in entries), file=stream)
        else:
            for entry in entries:
                print(entry.line(), file=stream)
    for note in conv.notes:
        print(f"note: {note}", file=stream)


def _short(source: str) -> str:
    """`multidatabackend.json[subject]: crop` → `[subject] crop`; `config.json: lora_rank` → `lora_rank`."""
    where, _, name = source.partition(": ")
    return f"{where[where.index('['):]} {name}" if "[" in where else name


def missing_overrides(conv: Conversion) -> List[str]:
    """Placeholders for keys the user must still set (`???`), so the rest can be validated."""
    return [f"{key}=/path/to/images" for key, (value, _) in conv.values.items() if value == MISSING]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="SimpleTuner's config.json (or config.toml, config.env)")
    parser.add_argument("dataloader", type=Path, nargs="?", help="its multidatabackend.json")
    parser.add_argument("-o", "--output", type=Path, help="write the experiment here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text, conv, problem = import_files(args.config, args.dataloader)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    report(conv, sys.stderr)
    if problem:
        print(f"error: the experiment does not validate: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
