from aixsss_ops.cli.entry import run

run()
