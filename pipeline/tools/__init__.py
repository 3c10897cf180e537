"""Tools that are clients of the engine and the report: grids of runs, the inspect figure, the config reference."""
