"""Live calls: the registry of calls and their lifecycle (CallManager), each speaker's track
drained into its analysis (LiveSpeaker), and where ICE may gather addresses."""
