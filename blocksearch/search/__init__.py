"""The search: driver, Optuna study on Ray Tune, trials, rungs and the first-stage score."""
