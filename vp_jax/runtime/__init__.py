"""Where the model runs, not what it computes: optional machinery.

``parallel``     data parallelism over devices and hosts (meshes, sharded batches, multi-process start)
``backend``      CPU-only code paths taken while tracing (scan unrolling, hand-written convolution gradient)
``xla_flags``    an XLA CPU flag measured faster, set before JAX starts; the malloc launcher line
``compat``       the only uses of other libraries' private names, each tested

Turning any of it off changes speed or memory, never a number the model computes.
"""
