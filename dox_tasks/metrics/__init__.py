"""Prometheus metrics: an exporter that derives counts from Postgres, and per-process
step timings from the workers in Prometheus multi-process mode.

Why two sources: workflow counts must be right however many prefork processes and
worker containers ran the work, so they are read from the results layer (the truth)
at scrape time; only timings, which exist nowhere else, come from the workers.
"""
