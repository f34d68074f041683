"""Availability formats, one per file, each one :class:`~fleetsim.traces.formats.base.TraceFormat`
registered in :mod:`fleetsim.traces.registry` (and the ``fleetsim.traces`` entry points):

* files: ``intervals`` (CSV/TSV/Parquet), ``fedscale`` (client_behave_trace pickle), ``flash``
  (state_traces.json), ``flash_windows`` (measured ``{user: [[start_s, end_s], ...]}``);
* models: ``always_online``, ``diurnal_model`` (the default), ``empirical`` (resampled
  measured windows), ``diurnal_windows`` (the model fitted on them);
* ``common.py``: the helpers every format shares (one trace-id order, period wrap and
  merge, time zones, intervals to a CSR trace).
"""
