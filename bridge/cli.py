"""``affect-bridge`` command line: analyze, evaluate, demo, run, schema, download-models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.config import Settings

__all__ = ["main"]

log = logging.getLogger("affect-bridge")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="affect-bridge",
        description="Per-speaker voice affect monitoring: prosody, emotion, and a stress index "
                    "relative to each speaker's own baseline (not a clinical measure).",
    )
    p.add_argument("--debug", action="store_true",
                   help="debug logging of affect-bridge's own modules, and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("analyze", help="analyse recordings (one speaker per file or channel)")
    a.add_argument("files", nargs="+", type=Path, metavar="FILE")
    a.add_argument("--per", choices=["file", "channel"], default="file",
                   help="one speaker per file (default) or per channel")
    a.add_argument("--format", choices=["jsonl", "table"], default="jsonl",
                   help="jsonl: events as JSON lines, summary on stderr; table: summary only")
    a.add_argument("--out", type=Path, help="write the JSON lines here instead of stdout")
    a.add_argument("--report", type=Path, metavar="PATH.html", help="write an HTML report")
    a.add_argument("--config", type=Path, help="TOML configuration file")

    e = sub.add_parser("evaluate", help="measure detection on your own labelled recordings")
    e.add_argument("labels", type=Path, metavar="LABELS",
                   help="CSV or TSV: file, start_s, end_s, label (calm/stressed, or emotions)")
    e.add_argument("--format", choices=["table", "json"], default="table")
    e.add_argument("--out", type=Path, help="also write the figures as JSON here")
    e.add_argument("--config", type=Path, help="TOML configuration file")

    d = sub.add_parser("demo", help="the embedded demo: a local WebRTC call of three bundled "
                                    "speakers, one of whom gets stressed")
    d.add_argument("--json", action="store_true", help="events as JSON lines")
    d.add_argument("--loop", action="store_true", help="keep the clips playing until Ctrl-C")
    d.add_argument("--config", type=Path, help="TOML configuration file")
    d.add_argument("--webhook", metavar="URL", help="also send events to this webhook (secret "
                   "from AFFECT_BRIDGE_WEBHOOK_SECRET)")
    d.add_argument("--listen", metavar="HOST:PORT", help="metrics address (default "
                   "127.0.0.1:9464)")

    r = sub.add_parser("run", help="the service: control API, live calls, events on stdout")
    r.add_argument("--config", type=Path, help="TOML configuration file")
    r.add_argument("--webhook", metavar="URL", help="also send events to this webhook (secret "
                   "from AFFECT_BRIDGE_WEBHOOK_SECRET)")
    r.add_argument("--listen", metavar="HOST:PORT", help="control API address "
                                                         "(default from config: 127.0.0.1:9464)")

    s = sub.add_parser("schema", help="print the JSON Schema of the event envelope")
    s.add_argument("--indent", type=int, default=2)

    m = sub.add_parser("download-models", help="fetch the configured model weights into the "
                                               "HuggingFace cache (for image builds)")
    m.add_argument("--config", type=Path, help="TOML configuration file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.debug)
    from analyzers.plugins import PluginError
    from bridge.audio import AudioDecodeError
    from bridge.config import ConfigError

    try:
        if args.command == "schema":
            return _schema(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args)
        if args.command == "download-models":
            return _download(args)
    except (AudioDecodeError, ConfigError, PluginError) as exc:
        print(f"affect-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"affect-bridge: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"affect-bridge: internal error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


PROJECT_LOGGERS = ("affect-bridge", "bridge", "analyzers")


def configure_logging(debug: bool, *, prefix: str = "affect-bridge") -> None:
    """INFO for everything; ``--debug`` turns on this project's loggers only (a library's DEBUG,
    numba's bytecode dumps for one, would flood the terminal). Worker processes log with their
    own ``prefix``."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"{prefix}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if debug:
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
    # Third-party chatter (transformers' own warnings, numba) stays out of normal output.
    for name in ("transformers", "numba", "urllib3", "filelock", "huggingface_hub", "aioice",
                 "aiortc"):
        logging.getLogger(name).setLevel(logging.WARNING if debug else logging.ERROR)
    # Read by transformers / huggingface_hub when (and only if) they are imported.
    if not debug:
        # torch's C++ warnings (e.g. int8 tensor creation being deprecated) go to stderr
        # unformatted; read when torch is first imported, which is later.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    """The configuration for this command; its ``log_level`` applies unless ``--debug``.
    ``--webhook URL`` adds one endpoint (secret from AFFECT_BRIDGE_WEBHOOK_SECRET)."""
    from bridge.config import load_settings

    settings = load_settings(args.config, **overrides)
    if getattr(args, "webhook", None):
        settings = load_settings(args.config, **overrides, webhooks=[
            *(w.model_dump() for w in settings.webhooks), {"url": args.webhook}])
    if not args.debug:
        logging.getLogger().setLevel(settings.log_level)
    return settings


def _schema(args: argparse.Namespace) -> int:
    from bridge.events import envelope_schema

    print(json.dumps(envelope_schema(), indent=args.indent or None))
    return EXIT_OK


def _analyze(args: argparse.Namespace) -> int:
    from bridge.analyze import analyze_files, format_table, print_errors
    from bridge.report import write_report

    settings = _settings(args)
    if args.report is not None and args.report.suffix.lower() not in (".html", ".htm"):
        print("affect-bridge: error: --report needs a .html path", file=sys.stderr)
        return EXIT_USAGE
    out = None
    if args.format == "jsonl":
        out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    try:
        result = asyncio.run(analyze_files(args.files, settings, per=args.per, out=out))
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
    table = format_table(result)
    print(table, file=sys.stdout if args.format == "table" else sys.stderr)
    if args.report is not None:
        write_report(result, args.report)
    print_errors(result)
    return EXIT_FAILED if result.failed else EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from bridge.evaluate import LabelError, evaluate, format_report, read_labels

    try:
        labels = read_labels(args.labels)  # bad labels fail before any model is loaded
        settings = _settings(args)
        report = asyncio.run(evaluate(labels, settings))
    except LabelError as exc:
        print(f"affect-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text if args.format == "json" else format_report(report))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo import print_summary, run_demo

    settings = _settings(args, **({"listen": args.listen} if args.listen else {}))
    result = asyncio.run(run_demo(settings, json_out=args.json, loop=args.loop))
    print_summary(result, to_stderr=args.json)
    return EXIT_FAILED if result.failed else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from bridge.service import serve

    settings = _settings(args, **({"listen": args.listen} if args.listen else {}))
    asyncio.run(serve(settings))
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    """Fetch the weights of every configured model into the HuggingFace cache (image builds)."""
    from analyzers.emotion import EmotionModel
    from analyzers.loading import ModelUnavailable
    from analyzers.semantic import SemanticConfig, SentimentModel, SpeechRecognizer

    settings = _settings(args)
    loaders: list[tuple[str, EmotionModel | SpeechRecognizer | SentimentModel]] = []
    if "emotion" in settings.analyzers:
        loaders.append((f"emotion model {settings.emotion.model}",
                        EmotionModel(settings.emotion.build())))
    if "semantic" in settings.analyzers:
        semantic = SemanticConfig(**settings.semantic.model_dump())
        loaders.append((f"speech recognition model {semantic.asr_model}",
                        SpeechRecognizer(semantic)))
        if semantic.sentiment != "vader":
            loaders.append((f"sentiment model {semantic.sentiment}", SentimentModel(semantic)))
    if not loaders:
        print("no model-backed analyzer is configured: nothing to download")
        return EXIT_OK
    failed = False
    for what, loader in loaders:
        try:
            loader.load(download=True)
        except ModelUnavailable as exc:
            print(f"affect-bridge: error: {exc}", file=sys.stderr)
            failed = True
        else:
            print(f"{what} is in the local cache")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
