"""Make the CPU backend choice before any worker takes work, and report it (`docpipe doctor`).

The choice (ONNX export, int8 quantisation, interleaved measurement) costs
tens of seconds once per machine, model and library versions. `docpipe up`
runs ``python -m docpipe.embed.prepare`` in a child process before it starts
the workers, so the measurement never competes with parsing and the first
ingest does not pay for it. Reading a cached decision imports no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from docpipe.config import Settings

log = logging.getLogger(__name__)

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def decision_file(settings: Settings, model: str | None = None) -> Path:
    """Where the `auto` decision for `model` (default: the configured one) on this machine lives."""
    from docpipe.embed.autoselect import decision_path
    from docpipe.embed.st_config import read_st_config, resolve_model_dir

    name = model or settings.embed.model
    st_config = read_st_config(resolve_model_dir(name, cache_dir=settings.model_cache_dir))
    return decision_path(settings.model_cache_dir, name=name, transformer_dir=st_config.transformer_dir)


def needs_choice(settings: Settings) -> bool:
    """True when backend `auto` has no cached decision here (on a GPU the child finds nothing to measure)."""
    if settings.embed.backend != "auto" or settings.embed.device == "cuda":
        return False
    from docpipe.embed.autoselect import read_decision

    try:
        return read_decision(decision_file(settings)) is None
    except Exception as exc:  # a model that cannot be resolved fails later, where the user sees why
        log.warning("cannot check the embedding backend decision: %s", exc)
        return False


def backend_report(settings: Settings) -> dict:
    """CPU flags, cache location, the configured and chosen backend with its measured rates; no torch import."""
    from docpipe.embed.autoselect import read_decision
    from docpipe.embed.runtime import cpu_count, cpu_flags

    flags = cpu_flags()
    report: dict = {
        "cpu_flags": {f: f in flags for f in INTERESTING_FLAGS},
        "cores": cpu_count(),
        "model": settings.embed.model,
        "configured_backend": settings.embed.backend,
        "cache_dir": str(settings.model_cache_dir),
    }
    try:
        path = decision_file(settings)
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        return report
    decision = read_decision(path)
    report["decision_file"] = str(path)
    report["chosen_backend"] = decision["backend"] if decision else None
    report["query_backend"] = decision.get("query_backend") if decision else None
    report["measured"] = decision.get("measured") if decision else None
    report["sample"] = decision.get("sample") if decision else None
    return report


def choose(settings: Settings, *, remeasure: bool = False) -> dict:
    """Load the configured embedder (measuring if `auto` has no decision, or `remeasure`); what it chose."""
    from docpipe.embed import load_embedder

    embedder = load_embedder(settings.embed, cache_dir=settings.model_cache_dir, remeasure=remeasure)
    return {"backend": embedder.backend, "device": embedder.device, **backend_report(settings)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docpipe.embed.prepare", description=__doc__)
    parser.add_argument("--remeasure", action="store_true", help="measure even if a decision is cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(choose(Settings(), remeasure=args.remeasure), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
