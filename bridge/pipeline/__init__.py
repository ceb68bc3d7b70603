"""The per-speaker analysis path: audio frames in (MediaClock, conversion), analysis events out
(SpeakerAnalysis per speaker, one AnalysisEngine per process). Knows nothing of calls or sinks."""
