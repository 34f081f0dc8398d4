"""``stream-lstm dashboard``: a small web page charting, for chosen keys, the actuals and the
forecasts (with their intervals) live from the Kafka topics.

``store`` keeps the bounded per-key series, ``feed`` fills it from Kafka in a background
thread, ``server`` serves the page and its JSON API; ``static/`` holds the page and the
vendored uPlot chart library (MIT, see ``static/vendor/``).
"""
