"""Architectures as graphs: ``graphs`` (the :class:`ArchGraph` data structure, JSON lines,
tracing Flax models), ``onnx_import``, ``nas_bench_graph`` (the NAS-Bench-Graph search space),
``architectures`` (Flax definitions of the zoo families, a registry by name),
``graph_features`` (op counts, Weisfeiler-Lehman features) and ``archi2vec`` (the jraph
graph-network encoder). Import the modules themselves."""
