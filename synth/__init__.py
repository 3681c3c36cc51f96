"""synth: synthetic chat examples from train-split seeds or document chunks, reward-filtered.

Modules: :mod:`synth.config` (typed settings), :mod:`synth.backends` (openai / local
backends, retries, cache), :mod:`synth.strategies` (seeds, prompt templates, parsing),
:mod:`synth.reward` (judge + heuristics), :mod:`synth.generate` (the run),
:mod:`synth.server` (a small OpenAI-compatible server and a fault-injecting proxy).
"""
