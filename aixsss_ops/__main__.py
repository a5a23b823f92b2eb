from aixsss_ops.cli.main import run

run()
