"""``affect-bridge`` command line: analyze, evaluate, demo, run, schema, download-models,
models check, export-model."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from analyzers.emotion import EmotionModel
    from analyzers.semantic import SentimentModel, SpeechRecognizer
    from bridge.config import Settings
    from bridge.offline.download import ConfiguredModel

    ModelLoader = EmotionModel | SpeechRecognizer | SentimentModel

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
    _offline_commands(sub)
    _live_commands(sub)
    _model_commands(sub)
    return p


def _offline_commands(sub: Any) -> None:
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
                   help="CSV or TSV: file, start_s, end_s, label (calm/stressed, or emotions); "
                        "or a header file,start_s,end_s then any of arousal, valence, dominance "
                        "(numeric labels, scored by CCC)")
    e.add_argument("--label-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="scale of dimensional labels, mapped onto -1..1 (default: -1 1)")
    e.add_argument("--format", choices=["table", "json"], default="table")
    e.add_argument("--out", type=Path, help="also write the figures as JSON here")
    e.add_argument("--config", type=Path, help="TOML configuration file")
    s = sub.add_parser("schema", help="print the JSON Schema of the event envelope")
    s.add_argument("--indent", type=int, default=2)


def _live_commands(sub: Any) -> None:
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
    r.add_argument("--workers", metavar="N|auto", help="worker processes that own the calls "
                   "(config workers; default auto: one per usable core; 1: one process)")


def _model_commands(sub: Any) -> None:
    m = sub.add_parser("download-models", help="fetch the configured model weights into the "
                                               "HuggingFace cache (for image builds)")
    m.add_argument("--config", type=Path, help="TOML configuration file")
    models = sub.add_parser("models", help="inspect emotion checkpoints").add_subparsers(
        dest="models_command", required=True)
    c = models.add_parser("check", help="what a checkpoint is and how it would run here (the "
                          "check the service runs at start); exit 2 when it would be refused")
    c.add_argument("model", help="a local checkpoint directory, or a hub id in the local cache")
    c.add_argument("--trust-remote-code", action="store_true",
                   help="accept a checkpoint with its own model code (runs that code)")
    c.add_argument("--precision", default="auto",
                   choices=["auto", "fp32", "bf16", "int8"], help="as [emotion] precision")
    c.add_argument("--json", action="store_true", help="the report as JSON")
    x = sub.add_parser("export-model", help="write an emotion checkpoint as a model repository "
                       "that Triton and MLServer serve ([emotion] backend = \"remote\")")
    x.add_argument("model", help="a local checkpoint directory, or a hub id in the local cache")
    x.add_argument("--format", required=True, choices=["triton"],
                   help="triton: a Triton model repository (pytorch_libtorch) that MLServer "
                        "serves too")
    x.add_argument("directory", type=Path, metavar="DIR", help="the model repository; the model "
                   "goes into DIR/NAME, which must not exist or be empty")
    x.add_argument("--name", default="affect-emotion", help="the model's name on the server "
                   "(default: affect-emotion)")
    x.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16+matmul"],
                   help="fp32 (default; runs on any server), bf16 or bf16+matmul (the feature "
                        "encoder as matrix products: faster on a CPU server; both where this "
                        "processor computes bf16 natively)")
    x.add_argument("--trust-remote-code", action="store_true",
                   help="accept a checkpoint with its own model code (runs that code)")


def main(argv: list[str] | None = None) -> int:
    from bridge.logsafe import configure_logging

    args = _parser().parse_args(argv)
    configure_logging(args.debug)  # before anything imports transformers (it reads the env)
    from analyzers.plugins import PluginError
    from bridge.config import ConfigError
    from bridge.pipeline.audio import AudioDecodeError

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
        if args.command == "models":
            return _models_check(args)
        if args.command == "export-model":
            return _export_model(args)
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
    from bridge.offline.analyze import analyze_files, format_table, print_errors
    from bridge.offline.report import write_report

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
    from bridge.offline.evaluate import LabelError, evaluate, format_report, read_labels

    try:
        label_range = tuple(args.label_range) if args.label_range else None
        labels = read_labels(args.labels, label_range)  # bad labels fail before any model loads
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
    from bridge.demo.run import print_summary, run_demo

    settings = _settings(args, **({"listen": args.listen} if args.listen else {}))
    result = asyncio.run(run_demo(settings, json_out=args.json, loop=args.loop))
    print_summary(result, to_stderr=args.json)
    return EXIT_FAILED if result.failed else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from bridge.service import serve

    overrides: dict[str, object] = {"listen": args.listen} if args.listen else {}
    if args.workers is not None:  # validated with the rest of the settings (auto | 1..256)
        overrides["workers"] = args.workers if args.workers == "auto" else \
            int(args.workers) if args.workers.isdigit() else args.workers
    settings = _settings(args, **overrides)
    asyncio.run(serve(settings))
    return EXIT_OK


def _models_check(args: argparse.Namespace) -> int:
    import json

    from analyzers.loading import ModelUnavailable
    from bridge.offline.models import check, format_check

    try:
        report = check(args.model, trust_remote_code=args.trust_remote_code,
                       precision=args.precision)
    except ModelUnavailable as exc:
        print(f"affect-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=2) if args.json else format_check(report))
    return EXIT_USAGE if report["refused"] else EXIT_OK


def _export_model(args: argparse.Namespace) -> int:
    from analyzers.loading import ModelUnavailable
    from bridge.offline.export import ExportError, ExportMismatch, export_model, format_export

    try:
        exported = export_model(args.model, args.directory, name=args.name,
                                precision=args.precision,
                                trust_remote_code=args.trust_remote_code)
    except ExportMismatch as exc:  # the traced model disagrees: nothing was written
        print(f"affect-bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ExportError, ModelUnavailable) as exc:
        print(f"affect-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_export(exported))
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    """Fetch the weights of every configured model into the HuggingFace cache (image builds).

    The hub library's retry warnings show, one line each, while it waits. When the hub was not
    reached (or HF_HUB_OFFLINE kept it from being asked), the last line says so and what to do;
    the other hub models are then not tried (each would wait through the same retries)."""
    from analyzers.emotion import EmotionModel
    from analyzers.semantic import SentimentModel, SpeechRecognizer
    from bridge.offline.download import ConfiguredModel

    settings = _settings(args)
    loaders: list[tuple[ConfiguredModel, EmotionModel | SpeechRecognizer | SentimentModel]] = []
    if "emotion" in settings.analyzers and settings.emotion.backend == "local":
        # remote: the inference server holds the weights, the bridge none
        loaders.append((ConfiguredModel("emotion model", "[emotion] model",
                                        settings.emotion.model),
                        EmotionModel(settings.emotion)))
    if "semantic" in settings.analyzers:
        semantic = settings.semantic
        loaders.append((ConfiguredModel("speech recognition model", "[semantic] asr_model",
                                        semantic.asr_model), SpeechRecognizer(semantic)))
        if semantic.sentiment != "vader":
            loaders.append((ConfiguredModel("sentiment model", "[semantic] sentiment",
                                            semantic.sentiment), SentimentModel(semantic)))
    if not loaders:
        print("no model-backed analyzer is configured: nothing to download")
        return EXIT_OK
    if not args.debug:  # the retry warnings: a build log then says what it is waiting for
        logging.getLogger("huggingface_hub").setLevel(max(logging.WARNING,
                                                          logging.getLogger().level))
    return _fetch_all(loaders)


def _fetch_all(loaders: Sequence[tuple[ConfiguredModel, ModelLoader]]) -> int:
    from analyzers.loading import ModelUnavailable
    from bridge.offline.download import HubFailure, hub_failure

    failed = False
    hub: HubFailure | None = None
    not_fetched: list[ConfiguredModel] = []
    for model, loader in loaders:
        if hub is not None and not hub.offline and not Path(model.name).is_dir():
            not_fetched.append(model)  # the hub is down: no second wait through its retries
            continue
        try:
            loader.load(download=True)
        except Exception as exc:
            found = hub_failure(exc)
            if found is None and not isinstance(exc, ModelUnavailable):
                raise  # not a model being unavailable: main() reports it
            failed = True
            if found is None:
                print(f"affect-bridge: error: {exc}", file=sys.stderr)
            else:
                hub = hub or found
                not_fetched.append(model)
        else:
            print(f"{model.what} {model.name} is in the local cache")
    if hub is not None:
        print(f"affect-bridge: error: {hub.advice(not_fetched)}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
