"""The reproduction: the paper's experiments, the benchmark harness and the model zoo.

This layer sits above the library and uses only its public API (``import weightnorm as wn``),
as a user's own code would; nothing in the library imports it. Its modules import their
optional dependencies (the ``experiments`` extra: numpy, mnist1d, scikit-learn, matplotlib,
tqdm, gymnasium; the ``zoo`` extra: transformers, snac, bigvgan) only where they use them, so
``weightnorm --help`` and ``weightnorm bench`` work on a bare install.

- :mod:`.runner`, :mod:`.report`, :mod:`.configs`: the main job, the paper's comparison of
  parameterizations (``weightnorm reproduce``), on the data of :mod:`.data` with the networks
  of :mod:`.models` and the methods of :mod:`.methods`;
- :mod:`.conditioning`, :mod:`.vae`, :mod:`.recurrent`, :mod:`.dqn`: the paper's further
  experiments (``weightnorm reproduce NAME``), one module each, run and reported by
  :mod:`.curves`; :mod:`.effective_lr` (``weightnorm reproduce effective-lr``): beyond the
  paper, ``||v||``, the effective step and forced weight norm over a learning-rate grid;
- :mod:`.jobs` and :mod:`.records`: resumable parallel runs with typed, validated records;
  :mod:`.settings`: ``--set KEY=VALUE`` overrides;
- :mod:`.bench` and :mod:`.zoo`: ``weightnorm bench`` and the real models it and the tests use.
"""
