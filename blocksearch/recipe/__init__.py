"""One candidate: data, teacher cache, distillation, probe, generation, evaluation, latency and cost."""
