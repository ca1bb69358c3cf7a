"""Dataflow wiring only: `build_flow(settings) -> Dataflow`."""
