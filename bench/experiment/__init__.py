"""An experiment on disk: grid specs, presets, trial ids, records, the run lock, data fingerprints, provenance,
baselines."""
