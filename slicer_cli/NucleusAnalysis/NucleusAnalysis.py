"""Nucleus Analysis slicer CLI: parse arguments -> run the engine -> report.

slicer_cli_web runs it as ``python -m slicer_cli NucleusAnalysis ...``; a person can run
``nucleus-analysis SLIDE OUT.anot OUT.csv`` after ``pip install .[cli]``.

The XML (what HistomicsUI shows, what a job may set) holds no parameter that names a host, a
port, a path or a model. Those are deployment settings, given on the command line by the
person running it (``--triton-url``, ``--model-name``, ``--scheduler``, ``--max-slide-px``,
listed by ``--help``), or by the environment the deployment runs it in
(``NUCLEUS_ANALYSIS_TRITON_URL``, ``NUCLEUS_ANALYSIS_TRITON_MODEL``,
``NUCLEUS_ANALYSIS_SCHEDULER``; the Girder worker passes its own that way).

Exit codes: 0 done; 1 the run failed (slide, model, backend, output), with one ``error:``
line; 2 an argument is invalid (nothing was read), with one ``error:`` line; 130 interrupted.
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


#: deployment settings: command-line flag -> (environment variable, help)
DEPLOYMENT_FLAGS = {
    "--triton-url": ("NUCLEUS_ANALYSIS_TRITON_URL",
                     "Triton Inference Server URL (http://host:8000 or grpc://host:8001); "
                     "unset runs the shipped model in-process with ONNX Runtime"),
    "--model-name": ("NUCLEUS_ANALYSIS_TRITON_MODEL",
                     "name of the model: on the Triton server, or without one the model "
                     "folder of that name in the shipped model repository, models/ "
                     "(default: nucleus_unet, fast on a CPU; nucleus_unet_accurate is "
                     "wider, for a GPU or Triton)"),
    "--scheduler": ("NUCLEUS_ANALYSIS_SCHEDULER",
                    "dask.distributed scheduler (tcp://host:8786), or local:N for a local "
                    "cluster of N worker processes; unset runs threads in this process"),
    "--max-slide-px": (None, "refuse slides declaring more base pixels than this "
                             "(default 5e10)"),
}


def add_deployment_flags(parser) -> None:
    """The command-line-only flags (not in the XML: a job never sets them)."""
    group = parser.add_argument_group(
        "deployment (command line or environment only; never a job parameter)")
    for flag, (env, text) in DEPLOYMENT_FLAGS.items():
        dest = flag.lstrip("-").replace("-", "_")
        default = os.environ.get(env, "").strip() if env else ""
        group.add_argument(flag, dest=dest, default=default or None, metavar="<value>",
                           help=text + (f" [environment: {env}]" if env else ""))


#: outputs beyond the XML's (chosen by whoever runs the CLI: a person, or the Girder worker)
EXTRA_OUTPUTS = {
    "--plot-table": "also write the plottable table (CSV: min_x/min_y/max_x/max_y, class "
                    "and the features worth plotting, as HistomicsUI's Metadata Plot reads)",
    "--qupath-file": "also write the nuclei as a QuPath GeoJSON (detections with class and "
                     "measurements; a .gz name compresses it)",
}


def add_output_flags(parser) -> None:
    """The command-line-only extra outputs."""
    group = parser.add_argument_group("extra outputs (command line only)")
    for flag, text in EXTRA_OUTPUTS.items():
        group.add_argument(flag, dest=flag.lstrip("-").replace("-", "_"), default=None,
                           metavar="<file>", help=text)


def options_from_args(args):
    """The engine's options from parsed arguments.

    Raises
    ------
    slicer_cli.nuclei.errors.OptionsError
        On any non-finite, out-of-range or malformed value.
    """
    from slicer_cli.nuclei.errors import OptionsError
    from slicer_cli.nuclei.options import AnalysisOptions

    extra = {}
    if args.max_slide_px is not None:
        try:
            extra["max_slide_px"] = float(args.max_slide_px)
        except ValueError as e:
            raise OptionsError("--max-slide-px must be a number") from e
    return AnalysisOptions(
        region=tuple(args.region) if args.region else None,
        slide_mpp=args.slide_mpp or None,
        triton_url=args.triton_url or None,
        model_name=args.model_name or None,
        batch_size=args.batch_size,
        tile_size_px=args.tile_size or None,
        stain_normalize=bool(args.stain_normalize),
        test_time_flips=bool(args.test_time_flips),
        test_time_shifts=bool(args.test_time_shifts),
        grid_anchor=bool(args.grid_anchor),
        min_tissue_fraction=args.min_tissue_fraction,
        scheduler=args.scheduler or None,
        workers=args.workers,
        parquet=not args.no_parquet,
        device=args.device,
        precision=args.precision,
        **extra,
    )


def main(args) -> int:
    """Run the analysis for parsed slicer arguments; return the exit code."""
    from slicer_cli.nuclei.errors import AnalysisError, OptionsError
    from slicer_cli.nuclei.pipeline import run_analysis

    try:
        options = options_from_args(args)
    except OptionsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = _Progress()
    try:
        result = run_analysis(args.inputImageFile, args.outputNucleiAnnotationFile,
                              args.outputFeatureFile, options, progress,
                              plot_table_path=args.plot_table, qupath_path=args.qupath_file)
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
    add_deployment_flags(parser)
    add_output_flags(parser)

    def error(message: str) -> None:  # one line, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    args = parser.parse_args(argv)
    return main(args)


if __name__ == "__main__":
    sys.exit(console_main())
