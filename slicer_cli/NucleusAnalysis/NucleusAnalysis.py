"""Nucleus Analysis slicer CLI: parse arguments -> run the engine -> report.

slicer_cli_web runs it as ``python -m slicer_cli NucleusAnalysis ...``; a person can run
``nucleus-analysis SLIDE OUT.anot OUT.csv`` after ``pip install .[cli]``.
"""
from __future__ import annotations

import os
import sys

XML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NucleusAnalysis.xml")


class _Progress:
    """``<filter-progress>`` lines for slicer_cli_web, plus a bar when a person watches."""

    def __init__(self) -> None:
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=1000, unit="‰", desc="nuclei", file=sys.stderr,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        print(f"<filter-progress>{fraction:.4f}</filter-progress>", flush=True)
        if self._bar is not None:
            self._bar.n = int(fraction * 1000)
            self._bar.set_postfix_str(message)
        else:  # job logs: stdout carries progress, stderr only errors
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def main(args) -> int:
    """Run the analysis for parsed slicer arguments; return the exit code."""
    from slicer_cli.nuclei.errors import AnalysisError
    from slicer_cli.nuclei.pipeline import AnalysisOptions, run_analysis

    region = tuple(args.region) if args.region and any(v >= 0 for v in args.region) else None
    if region is not None and len(region) != 4:
        print("error: --region needs four numbers: left,top,width,height", file=sys.stderr)
        return 2
    options = AnalysisOptions(
        region=region,
        slide_mpp=args.slide_mpp or None,
        triton_url=args.triton_url or None,
        model_name=args.model_name or None,
        batch_size=args.batch_size,
        tile_size_px=args.tile_size or None,
        stain_normalize=bool(args.stain_normalize),
        min_tissue_fraction=args.min_tissue_fraction,
        scheduler=args.scheduler or None,
        workers=args.workers,
        parquet=not args.no_parquet,
    )
    progress = _Progress()
    try:
        result = run_analysis(args.inputImageFile, args.outputNucleiAnnotationFile,
                              args.outputFeatureFile, options, progress)
    except AnalysisError as e:
        progress.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print("error: interrupted; no outputs written", file=sys.stderr)
        return 130
    progress.close()
    per_class = ", ".join(f"{k} {v}" for k, v in result.class_counts.items())
    print(f"{result.nuclei} nuclei ({per_class}) in {result.tiles} tiles "
          f"({result.skipped_tiles} without tissue skipped); {result.tissue_mpx:.1f} tissue Mpx "
          f"in {result.wall_s:.1f} s, {result.inference_s:.1f} s inside inference", flush=True)
    for path in result.outputs:
        print(f"wrote {path}", flush=True)
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def console_main(argv: list[str] | None = None) -> int:
    """Entry point: parse with the real slicer argument parser (ctk_cli) and run."""
    import signal

    from ctk_cli import CLIArgumentParser
    from slicer_cli_web import ctk_cli_adjustment  # noqa: F401

    # slicer_cli_web / girder_worker cancel a job with SIGTERM: unwind so outputs are dropped.
    signal.signal(signal.SIGTERM, _terminate)
    parser = CLIArgumentParser(XML)
    args = parser.parse_args(argv)
    return main(args)


if __name__ == "__main__":
    sys.exit(console_main())
