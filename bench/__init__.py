"""tripletbench: the six commands (`python -m bench.X`) sit here, the wings they share below them.

- bench/engine/: what one trial computes (config, data, models, protocol, evaluation, training loop);
- bench/experiment/: an experiment on disk (grid spec, presets, trial ids, records, lock, provenance, baselines);
- bench/reporting/: records to tables and plots (statistics, tables, plots, the systems table).

A wing imports only the wings below it (losses < engine < experiment < reporting) and never a command.
"""
