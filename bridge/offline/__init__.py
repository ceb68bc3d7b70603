"""Tools that run on recordings or models, not on calls: analyze, evaluate, the HTML report,
spike detection measures, `models check` and `download-models`."""
