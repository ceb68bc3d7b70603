"""Pure voice analysis: VAD, prosody, emotion, stress. No aiortc, no aiohttp."""
