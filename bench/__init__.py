"""localtune's benchmarks: scripts that measure speed and memory and report figures (tests never assert on time).

bench/ is a package so that its scripts can import each other as `bench.xxx` without editing sys.path.
Each one runs as a module from the repository root; README.md here lists them.

Run as:  python -m bench.compare_stacks --preset cpu      # or bench.data_pipeline, bench.export_throughput, ...
"""
